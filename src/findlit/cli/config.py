"""The one config loader of the ``findlit`` subcommands that are not LightningCLI's.

``findlit data check`` and ``findlit cache`` read experiment YAMLs the way LightningCLI does
(OmegaConf merge, later files win, ``${...}`` resolved) and build the DataModule from the ``data``
section, checked against its signature.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentParser
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from findlit.errors import ConfigError


def load_config(config_paths: Sequence[str]) -> dict[str, Any]:
    """Merge experiment YAMLs with OmegaConf (later files win) into one resolved mapping."""
    merged: Any = OmegaConf.create()
    for path in config_paths:
        if not Path(path).is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            merged = OmegaConf.merge(merged, OmegaConf.load(path))
        except (OmegaConfBaseException, yaml.YAMLError, ValueError, TypeError) as error:
            raise ConfigError(f"cannot read config {path}: {error}") from None
    try:
        container = OmegaConf.to_container(merged, resolve=True)
    except OmegaConfBaseException as error:
        raise ConfigError(f"cannot resolve config {', '.join(config_paths)}: {error}") from None
    if not isinstance(container, dict):
        raise ConfigError(f"{', '.join(config_paths)} should hold a mapping")
    return {str(key): value for key, value in container.items()}


def load_data_section(config_paths: Sequence[str]) -> dict[str, Any]:
    """Merge experiment YAMLs with OmegaConf and return their ``data`` section (init args)."""
    container = load_config(config_paths)
    if "data" not in container:
        raise ConfigError(f"no 'data' section in {', '.join(config_paths)}")
    data = container["data"]
    if isinstance(data, dict) and "init_args" in data:
        data = data["init_args"]
    if not isinstance(data, dict):
        raise ConfigError("the 'data' section should be a mapping")
    return data


def build_datamodule(data: dict[str, Any]) -> Any:
    """Validate a ``data`` section against the DataModule's signature and build it."""
    from findlit.data.datamodule import MultiTaskDataModule

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(MultiTaskDataModule, "data")
    try:
        namespace = parser.parse_object({"data": data})
    except Exception as error:  # jsonargparse raises argparse.ArgumentError with the offending key
        raise ConfigError(str(error)) from None
    return parser.instantiate(namespace).data
