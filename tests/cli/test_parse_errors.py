"""Config errors of ``findlit fit|validate|test|predict``: one line naming the key and its file.

Driven through the real command (in-process ``findlit.cli.main``); each ends with exit code 2 before
anything is built, with no usage dump and no traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from findlit.cli import main
from findlit.cli.parse_errors import config_error
from tests.cli.test_train import tiny_config
from tests.fixtures import REPO


def edited(tmp_path: Path, change: Any, name: str = "edited.yaml") -> Path:
    """A copy of the tiny config with ``change`` applied to its content."""
    config = yaml.safe_load(tiny_config(tmp_path).read_text())
    change(config)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def config_error_line(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """The one ``findlit: config error:`` line of a command that must end with exit code 2."""
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and "usage:" not in err
    [line] = [line for line in err.splitlines() if line.startswith("findlit:")]
    assert line.startswith("findlit: config error: "), err
    return line


def test_misspelt_interface_key(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    def misspell(config: dict[str, Any]) -> None:
        config["model"]["interface"]["hidden_dimm"] = config["model"]["interface"].pop("hidden_dim")

    path = edited(tmp_path, misspell)
    line = config_error_line(capsys, "fit", "--config", str(path))
    assert line == f"findlit: config error: model.interface.hidden_dimm: no such option (in {path})"
    assert not (tmp_path / "logs").exists()  # nothing was built or written


def test_wrong_interface_type(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = edited(tmp_path, lambda config: config["model"]["interface"].update(num_layers="three"))
    line = config_error_line(capsys, "validate", "--config", str(path))
    assert line == f"findlit: config error: model.interface.num_layers: expected int, got 'three' (in {path})"


@pytest.mark.parametrize(
    ("options", "key", "problem"),
    [
        ({"num_points": "many"}, "segmentation.num_points", "expected int, got 'many'"),
        ({"weightz": {"ce": 1.0}}, "segmentation.weightz", "no such option"),
        ({"weights": {"cee": 1.0}}, "segmentation.weights.cee", "no such option"),
    ],
    ids=["wrong-type", "misspelt-key", "misspelt-loss-weight"],
)
def test_task_options_are_checked_against_the_task_class(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, options: dict[str, Any], key: str, problem: str
) -> None:
    path = edited(tmp_path, lambda config: config["model"]["task_options"]["segmentation"].update(options))
    line = config_error_line(capsys, "fit", "--config", str(path))
    assert line == f"findlit: config error: model.task_options.{key}: {problem} (in {path})"
    assert not (tmp_path / "logs").exists()


def test_misspelt_key_in_a_list_entry_names_its_index(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    def misspell(config: dict[str, Any]) -> None:
        config["data"]["train"][1]["pathz"] = config["data"]["train"][1].pop("paths")

    path = edited(tmp_path, misspell)
    line = config_error_line(capsys, "fit", "--config", str(path))
    assert line == f"findlit: config error: data.train[1].pathz: no such option (in {path})"


def test_wrong_type_in_a_list_entry_names_its_index(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = edited(tmp_path, lambda config: config["data"]["train"][2].update(batch_size="many"))
    line = config_error_line(capsys, "test", "--config", str(path))
    assert line == f"findlit: config error: data.train[2].batch_size: expected int, got 'many' (in {path})"


def test_the_key_is_named_with_the_partial_that_set_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tiny_config(tmp_path)
    partial = tmp_path / "partial.yaml"
    partial.write_text(yaml.safe_dump({"model": {"lrr": 0.1}}))
    line = config_error_line(capsys, "fit", "--config", str(config), "--config", str(partial))
    assert line == f"findlit: config error: model.lrr: no such option (in {partial})"


def test_a_command_line_value_is_named_as_such(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tiny_config(tmp_path)
    line = config_error_line(capsys, "fit", "--config", str(config), "--model.lr", "fast")
    assert line == "findlit: config error: model.lr: expected float, got 'fast' (on the command line)"


def test_unknown_message_keeps_its_first_line() -> None:
    assert str(config_error("something new\n  with details", [])) == "something new"


@pytest.mark.slow
def test_console_script_prints_one_line(tmp_path: Path) -> None:
    """The whole stderr of the real process (Lightning's logging included) is the one line."""

    def misspell(config: dict[str, Any]) -> None:
        config["data"]["train"][0]["pathz"] = config["data"]["train"][0].pop("paths")

    path = edited(tmp_path, misspell)
    paths = [str(REPO / "src"), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    result = subprocess.run(
        [sys.executable, "-m", "findlit", "fit", "--config", str(path)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(paths)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr == f"findlit: config error: data.train[0].pathz: no such option (in {path})\n"


@pytest.mark.parametrize(
    ("value", "expected"), [({}, "modell: no such section"), ({"lr": 1.0}, "modell.lr: no such option")]
)
def test_unknown_top_level_section(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, value: dict[str, Any], expected: str
) -> None:
    """jsonargparse ignores a config file's unknown top-level key with an empty mapping: refused too."""
    path = edited(tmp_path, lambda config: config.update(modell=value))
    line = config_error_line(capsys, "fit", "--config", str(path))
    assert line == f"findlit: config error: {expected} (in {path})"
