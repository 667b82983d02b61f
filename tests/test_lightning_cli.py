"""``findlit fit|validate|test|predict``: the LightningCLI over FINDModule and MultiTaskDataModule."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import yaml

import findlit
from findlit.cli import main
from findlit.data.synthetic import generate
from tests.fixtures import REPO
from tests.test_module import INTERFACE, TASK_OPTIONS, data_section

DEMO = REPO / "configs" / "demo.yaml"
FAST = REPO / "configs" / "debug" / "fast.yaml"

CONFIG_RUNS = {
    "demo": [DEMO],
    "demo+fast": [DEMO, FAST],
    "coco_sample": [REPO / "configs" / "coco_sample.yaml"],
}
"""Every experiment YAML under configs/ (configs/prototypes/ holds attention prototypes, not
experiments), and every partial merged after the experiment it refines."""


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_every_config_file_is_covered() -> None:
    experiments = {
        path
        for path in (REPO / "configs").rglob("*.yaml")
        if "prototypes" not in path.relative_to(REPO / "configs").parts
    }
    covered = {path for paths in CONFIG_RUNS.values() for path in paths}
    assert experiments == covered


@pytest.mark.parametrize("name", list(CONFIG_RUNS))
def test_config_parses_with_print_config(capsys: pytest.CaptureFixture[str], name: str) -> None:
    arguments = [argument for path in CONFIG_RUNS[name] for argument in ("--config", str(path))]
    code, out, err = run(capsys, "fit", *arguments, "--print_config")
    assert code == 0, err
    printed = yaml.safe_load(out)
    assert printed["trainer"]["use_distributed_sampler"] is False
    if name.startswith("demo"):
        assert printed["model"]["interface"]["num_proposals"] == 30
        assert printed["trainer"]["accelerator"] == "cpu"
    if name == "demo+fast":
        assert printed["trainer"]["max_steps"] == 2
        assert printed["trainer"]["limit_val_batches"] == 1
        assert printed["data"]["num_workers"] == 0
        # the partial changes only what it names
        assert printed["data"]["train"][0]["name"] == "demo_panoptic"
        assert printed["trainer"]["gradient_clip_val"] == 5.0


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"findlit {findlit.__version__}"
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for subcommand in ("fit", "validate", "test", "predict", "data", "cache"):
        assert subcommand in out
    code, _, err = run(capsys)
    assert code == 2
    assert all(subcommand in err for subcommand in ("fit", "validate", "test", "predict"))


def test_unknown_config_key_is_an_error_naming_it(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = yaml.safe_load(DEMO.read_text())
    config["model"]["interface_typo"] = {"hidden_dim": 8}
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(config))
    code, _, err = run(capsys, "fit", "--config", str(path), "--print_config")
    assert code != 0
    assert "interface_typo" in err


def tiny_config(tmp_path: Path) -> Path:
    """demo.yaml over a tiny generated dataset, with a tiny interface and test encoder."""
    generate(tmp_path / "data", train=8, val=4, size=64, seed=0)
    config: dict[str, Any] = yaml.safe_load(DEMO.read_text())
    data = data_section(tmp_path / "data")
    data["test"] = data["val"]
    data["steps_per_epoch"] = 2  # validation runs at the end of the epoch, within --trainer.max_steps 2
    config["data"] = data
    config["model"].update(
        vision_encoder={"name": "timm", "options": {"model": "test_resnet", "weights": None}},
        interface=INTERFACE,
        task_options=TASK_OPTIONS,
        warmup_steps=1,
    )
    logs = str(tmp_path / "logs")
    config["trainer"].update(
        default_root_dir=logs,
        logger={"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": logs}},
        val_check_interval=None,
        check_val_every_n_epoch=1,
        limit_val_batches=1,
        limit_test_batches=1,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_fit_then_test_from_the_checkpoint(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tiny_config(tmp_path)
    code, _, err = run(capsys, "fit", "--config", str(config), "--trainer.max_steps", "2")
    assert code == 0, err
    run_dir = tmp_path / "logs" / "lightning_logs" / "version_0"
    checkpoints = list((run_dir / "checkpoints").glob("*.ckpt"))
    assert len(checkpoints) == 1
    with open(run_dir / "metrics.csv") as file:
        columns = set(next(csv.reader(file)))
    assert "train/loss" in columns and "val/demo_panoptic/mIoU" in columns
    # the resolved config is saved next to the metrics
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["trainer"]["max_steps"] == 2

    code, out, err = run(capsys, "test", "--config", str(config), "--ckpt_path", str(checkpoints[0]))
    assert code == 0, err
    assert "test/demo_panoptic/mIoU" in out
    assert (tmp_path / "logs" / "lightning_logs" / "version_1" / "metrics.csv").is_file()
