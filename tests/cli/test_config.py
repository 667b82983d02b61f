"""The one config loader: sections in either of LightningCLI's forms, keys and where they were set."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from findlit.cli.config import (
    MISSING,
    config_files,
    config_section,
    key_source,
    load_config,
    value_at,
    with_list_index,
)
from findlit.errors import ConfigError


def test_config_section_in_both_forms() -> None:
    plain = config_section({"data": {"root": "x"}}, "data")
    assert plain.values == {"root": "x"} and plain.key == "data"
    wrapped = config_section({"model": {"class_path": "findlit.FINDModule", "init_args": {"lr": 1}}}, "model")
    assert wrapped.values == {"lr": 1} and wrapped.key == "model.init_args" and wrapped.get("lr") == 1
    with pytest.raises(ConfigError, match=r"no 'data' section in a\.yaml"):
        config_section({}, "data", ["a.yaml"])
    with pytest.raises(ConfigError, match=r"^data: should be a mapping"):
        config_section({"data": [1]}, "data")


def test_value_at_and_list_index() -> None:
    config = {"data": {"train": [{"paths": {}}, {"pathz": {}}, {"batch_size": "many"}]}}
    assert value_at(config, ["data", "train", 1, "pathz"]) == {}
    assert value_at(config, ["data", "val"]) is MISSING and value_at(config, ["data", "train", 5]) is MISSING
    assert with_list_index(["data", "train", "pathz"], config) == ["data", "train", 1, "pathz"]
    assert with_list_index(["data", "train", "batch_size"], config, "many") == [
        "data",
        "train",
        2,
        "batch_size",
    ]
    assert with_list_index(["data", "train", "nothing"], config) == ["data", "train", "nothing"]


def test_key_source(tmp_path: Path) -> None:
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text(yaml.safe_dump({"model": {"lr": 1, "tasks": ["x"]}}))
    second.write_text(yaml.safe_dump({"model": {"lr": 2}}))
    args = ["fit", "--config", str(first), f"--config={second}"]
    assert config_files(args) == [str(first), str(second)]
    assert key_source(["model", "lr"], config_files(args), args) == f"in {second}"  # later files win
    assert key_source(["model", "tasks"], config_files(args), args) == f"in {first}"
    assert key_source(["model", "lr"], [str(first)], [*args, "--model.lr", "3"]) == "on the command line"
    assert key_source(["model", "nothing"], [str(first)]) is None
    assert load_config([str(first), str(second)])["model"] == {"lr": 2, "tasks": ["x"]}
