"""The one loader of experiment YAMLs, for the ``findlit`` subcommands that are not LightningCLI's.

``findlit data check`` and ``findlit cache`` read experiment YAMLs the way LightningCLI does
(OmegaConf merge, later files win, ``${...}`` resolved: :func:`load_config`), take a section in
either of LightningCLI's forms (``data: {...}`` or ``data: {class_path: ..., init_args: {...}}``:
:func:`config_section`) and build the DataModule from the ``data`` section, checked against its
signature (:func:`build_datamodule`). The parse errors of the LightningCLI subcommands use the same
loader to find the list entry and the file a key came from (:func:`key_source`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentParser
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from findlit.errors import ConfigError
from findlit.option_errors import KeyPath, first_line, format_key, read_message

MISSING: Any = object()
"""What :func:`value_at` returns for a key the config does not have."""


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


@dataclass(frozen=True)
class ConfigSection:
    """One top-level section of a config (``data``, ``model``), in its plain form.

    Attributes:
        values: the section's keys (its ``init_args`` when it was written with a ``class_path``).
        key: the config key of ``values``: ``data``, or ``data.init_args`` for the class form, so
            that errors name the key as the user wrote it.

    """

    values: dict[str, Any]
    key: str

    def get(self, name: str, default: Any = None) -> Any:
        """``values[name]``, or ``default`` when the section lacks it."""
        return self.values.get(name, default)


def config_section(config: Mapping[str, Any], name: str, sources: Sequence[str] = ()) -> ConfigSection:
    """The section ``name`` of a loaded config, unwrapped from LightningCLI's class form.

    Args:
        config: a mapping from :func:`load_config`.
        name: ``data`` or ``model``.
        sources: the config files it was loaded from, named in errors.

    Raises:
        ConfigError: the section is missing, or not a mapping.

    """
    where = f" in {', '.join(sources)}" if sources else ""
    if name not in config:
        raise ConfigError(f"no '{name}' section{where}")
    values, key = config[name], name
    if isinstance(values, Mapping) and "init_args" in values:
        values, key = values["init_args"], f"{name}.init_args"
    if not isinstance(values, Mapping):
        raise ConfigError(f"{key}: should be a mapping{where}, got {type(values).__name__}")
    return ConfigSection({str(k): v for k, v in values.items()}, key)


def load_data_section(config_paths: Sequence[str]) -> dict[str, Any]:
    """Merge experiment YAMLs with OmegaConf and return their ``data`` section (init args)."""
    return config_section(load_config(config_paths), "data", config_paths).values


def build_datamodule(data: dict[str, Any], sources: Sequence[str] = ()) -> Any:
    """Validate a ``data`` section against the DataModule's signature and build it.

    Raises:
        ConfigError: naming the key (``data.train[0].pathz``) and, given the config files the
            section came from (``sources``), the file that set it.

    """
    from findlit.data.datamodule import MultiTaskDataModule

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(MultiTaskDataModule, "data")
    try:
        namespace = parser.parse_object({"data": data})
    except Exception as error:  # jsonargparse raises argparse.ArgumentError with the offending key
        read = read_message(str(error))
        if read is None:
            raise ConfigError(first_line(str(error))) from None
        key, problem, value = read
        key = with_list_index(key, {"data": data}, value)
        where = key_source(key, sources)
        raise ConfigError(f"{format_key(key)}: {problem}{f' ({where})' if where else ''}") from None
    return parser.instantiate(namespace).data


# -- keys and where they were set --------------------------------------------------------------


def value_at(config: Any, key: KeyPath) -> Any:
    """The value at ``key`` in nested mappings and lists, or :data:`MISSING`."""
    value = config
    for part in key:
        if isinstance(part, int):
            if not isinstance(value, list) or not -len(value) <= part < len(value):
                return MISSING
            value = value[part]
        elif isinstance(value, Mapping) and part in value:
            value = value[part]
        else:
            return MISSING
    return value


def config_files(args: Sequence[str]) -> list[str]:
    """The ``--config`` (``-c``) files of a LightningCLI command line, in order."""
    files: list[str] = []
    arguments = list(args)
    for index, argument in enumerate(arguments):
        if argument in ("--config", "-c") and index + 1 < len(arguments):
            files.append(arguments[index + 1])
        elif argument.startswith("--config="):
            files.append(argument.split("=", 1)[1])
    return files


def key_source(key: KeyPath, files: Sequence[str], args: Sequence[str] = ()) -> str | None:
    """Where ``key`` was set: ``"on the command line"``, ``"in <file>"``, or None when neither has it.

    The file is the last that has the key, as later files win.
    A command-line option of the key or of one of its parent sections (``--data.train``) wins over
    the files. Each file is read on its own, as it is written (no merge, no interpolation).
    """
    parents = [format_key(key[:end]) for end in range(len(key), 0, -1) if not isinstance(key[end - 1], int)]
    for argument in args:
        option = argument.split("=", 1)[0]
        if option.startswith("--") and option[2:] in parents:
            return "on the command line"
    for path in reversed(files):
        try:
            content = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError):
            continue
        if value_at(content, key) is not MISSING:
            return f"in {path}"
    return None


def with_list_index(key: KeyPath, config: Any, value: str | None = None) -> KeyPath:
    """``key`` with the index of the failing entry after its first list (``data.train`` -> ``[0]``).

    jsonargparse names a list and the option inside its failing entry, not the entry: the entry is
    the first of ``config``'s list that has that option (for an unknown option, ``value`` None) or
    that holds the offending ``value`` there (for a wrong type). ``key`` unchanged when none does.
    """
    for position in range(1, len(key)):
        entries = value_at(config, key[:position])
        if not isinstance(entries, list):
            continue
        rest = key[position:]
        for index, entry in enumerate(entries):
            found = value_at(entry, rest)
            if found is not MISSING and (value is None or str(found) == value):
                return [*key[:position], index, *rest]
        return key
    return key
