"""Exact resume: a fit killed after a checkpoint and resumed ends where an uninterrupted one does."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L  # noqa: N812
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint

from findlit.training.checkpoint_io import UseSafeCheckpointIO
from findlit.training.rng_states import RestoreRNGStates
from tests.cli.test_train import tiny_config
from tests.data.test_datamodule import make
from tests.fixtures import REPO


class _Draws(L.LightningModule):
    """Draws from the global generators in training and validation, as FINDModule's losses do."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.draws: list[tuple[int, float]] = []

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        draw = torch.rand(())
        self.draws.append((self.global_step, float(draw)))
        return (self.weight - draw) ** 2

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self.log(f"val/{dataloader_idx}", torch.rand(()), add_dataloader_idx=False, batch_size=1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(root: Path, coco_sample: Path, checkpoint: ModelCheckpoint | None, ckpt_path: Path | None) -> _Draws:
    L.seed_everything(0)
    module = _Draws()
    callbacks: list[L.Callback] = [RestoreRNGStates(), UseSafeCheckpointIO()]
    if checkpoint is not None:
        callbacks.append(checkpoint)
    L.Trainer(
        max_steps=8,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=checkpoint is not None,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=1,
        default_root_dir=root,
    ).fit(module, datamodule=make(coco_sample, steps_per_epoch=3), ckpt_path=ckpt_path)
    return module


@pytest.mark.slow
def test_resumed_fits_draw_what_the_uninterrupted_fit_drew(coco_sample: Path, tmp_path: Path) -> None:
    # 3 steps per epoch, validation at every epoch's end: checkpoints after steps 1 and 4 are taken
    # mid-epoch, that of epoch 0 (after its validation) at step 3
    uninterrupted = _fit(
        tmp_path, coco_sample, ModelCheckpoint(tmp_path, "{step}", every_n_train_steps=1, save_top_k=-1), None
    )
    epochs = tmp_path / "epochs"
    _fit(epochs, coco_sample, ModelCheckpoint(epochs, "{step}", save_top_k=-1), None)
    assert [step for step, _ in uninterrupted.draws] == list(range(8))
    for checkpoint in [tmp_path / "step=1.ckpt", tmp_path / "step=4.ckpt", epochs / "step=3.ckpt"]:
        step = torch.load(checkpoint, weights_only=True)["global_step"]
        resumed = _fit(tmp_path / f"resumed{step}", coco_sample, None, checkpoint)
        assert resumed.draws == uninterrupted.draws[step:], checkpoint
        assert torch.equal(resumed.weight, uninterrupted.weight)


class PauseAfterStep(L.Callback):
    """Sleeps after training step ``step`` so that a test can kill the run there (killed run only)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        """Sleep once ``step`` optimisation steps are done."""
        if trainer.global_step == self.step:
            time.sleep(600)


def _config(tmp_path: Path, name: str, pause_after: int | None = None) -> Path:
    """tiny_config, 3 steps per epoch, 6 in all, a checkpoint every 2 steps into ``name/checkpoints``."""
    root = tmp_path / name
    root.mkdir()
    config = yaml.safe_load(tiny_config(root).read_text())
    # the data is generated from a seed: every run gets the same files
    config["data"]["steps_per_epoch"] = 3
    logs = str(root / "logs")
    callbacks: list[dict[str, Any]] = [
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            # a fixed folder: --ckpt_path last looks for last.ckpt there, not in the new run's version_N
            "init_args": {"dirpath": str(root / "checkpoints"), "every_n_train_steps": 2, "save_last": True},
        }
    ]
    if pause_after is not None:
        callbacks.append({"class_path": f"{__name__}.PauseAfterStep", "init_args": {"step": pause_after}})
    config["trainer"].update(
        max_steps=6,
        deterministic=True,
        default_root_dir=logs,
        callbacks=callbacks,
        num_sanity_val_steps=0,
    )
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _findlit(config: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    """``findlit fit`` in a new process, stderr to ``log`` (one thread: the same arithmetic every run)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(log, "wb") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "findlit", "fit", "--config", str(config), *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )


def _finish(process: subprocess.Popen[bytes], log: Path) -> None:
    code = process.wait(timeout=300)
    assert code == 0, log.read_text(errors="replace")[-4000:]


def _metrics(version: Path) -> dict[tuple[str, str], str]:
    """Every logged value of a CSVLogger run by (step, name)."""
    with open(version / "metrics.csv") as file:
        return {
            (row["step"], name): value for row in csv.DictReader(file) for name, value in row.items() if value
        }


@pytest.mark.slow
def test_fit_killed_after_a_checkpoint_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    uninterrupted_log = tmp_path / "uninterrupted.log"
    uninterrupted = _findlit(_config(tmp_path, "uninterrupted"), uninterrupted_log)
    killed_config = _config(tmp_path, "killed", pause_after=3)
    killed = _findlit(killed_config, tmp_path / "killed.log")
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.exists():
        assert killed.poll() is None, (tmp_path / "killed.log").read_text(errors="replace")[-4000:]
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(timeout=60) == -signal.SIGKILL
    assert torch.load(last, weights_only=True)["global_step"] == 2

    # the killed run's config without the pause: the same folders, the same training
    config = yaml.safe_load(killed_config.read_text())
    config["trainer"]["callbacks"] = config["trainer"]["callbacks"][:1]
    resumed_config = killed_config.with_name("resume.yaml")
    resumed_config.write_text(yaml.safe_dump(config))
    resumed_log = tmp_path / "resumed.log"
    _finish(_findlit(resumed_config, resumed_log, "--ckpt_path", "last"), resumed_log)
    _finish(uninterrupted, uninterrupted_log)

    expected = torch.load(tmp_path / "uninterrupted" / "checkpoints" / "last.ckpt", weights_only=True)
    final = torch.load(last, weights_only=True)
    assert final["global_step"] == expected["global_step"] == 6
    assert final["state_dict"].keys() == expected["state_dict"].keys()
    for name, tensor in expected["state_dict"].items():
        assert torch.equal(final["state_dict"][name], tensor), name
    for (name, tensor), (_, other) in zip(
        _tensors(expected["optimizer_states"]), _tensors(final["optimizer_states"]), strict=True
    ):
        assert torch.equal(tensor, other), name

    logs = "logs/lightning_logs"
    expected_metrics = _metrics(tmp_path / "uninterrupted" / logs / "version_0")
    resumed_metrics = _metrics(tmp_path / "killed" / logs / "version_1")  # the resumed run's own log
    # both epochs' validations ran after the resume at step 2, and so did steps 3 to 6
    validation = {key for key in expected_metrics if key[1].startswith("val/")}
    assert len({step for step, _ in validation}) == 2
    assert validation <= resumed_metrics.keys()
    losses = sorted((int(step) for step, name in expected_metrics if name == "train/loss"))
    assert len(losses) == 6
    assert sorted(int(step) for step, name in resumed_metrics if name == "train/loss") == losses[2:]
    for key, value in resumed_metrics.items():
        assert expected_metrics.get(key) == value, key


def _tensors(value: Any, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    """Every tensor in nested dicts and lists, by path, in order."""
    if isinstance(value, torch.Tensor):
        return [(prefix, value)]
    if isinstance(value, dict):
        return [item for key in sorted(value, key=str) for item in _tensors(value[key], f"{prefix}/{key}")]
    if isinstance(value, list | tuple):
        return [item for index, entry in enumerate(value) for item in _tensors(entry, f"{prefix}/{index}")]
    return []
