"""DeferredRequeue and the DataLoader workers' signal handling, without SLURM.

The job-level behaviour (scancel --signal=USR1 on a real cluster, requeue, resume) is
tests/slurm/test_slurm.py's, run by `make test-slurm`.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L  # noqa: N812
import pytest
import torch
import yaml
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader

import findlit.data.datamodule as datamodule_module
from findlit.cli import main
from findlit.data.config import DatasetConfig, DatasetPaths
from findlit.data.datamodule import MultiTaskDataModule, init_worker
from findlit.data.synthetic import generate
from findlit.data.transforms import TransformConfig
from findlit.training.slurm_requeue import DeferredRequeue
from tests.distributed.runs import (
    DDP,
    findlit_command,
    logged_metrics,
    run_env,
    run_together,
    small_config,
    write_config,
)
from tests.fixtures import REPO
from tests.training.test_module import data_section

CONFIGS = REPO / "configs"

JOB_ID = "4242"
SIGNAL_STEP = 2
"""The DDP test signals rank 1 as its batch after this many optimizer steps starts."""


@pytest.fixture
def restore_sigusr1() -> Iterator[None]:
    previous = signal.getsignal(signal.SIGUSR1)
    yield
    signal.signal(signal.SIGUSR1, previous)


def bare_trainer(tmp_path: Path, **kwargs: Any) -> Trainer:
    return Trainer(
        accelerator="cpu",
        devices=1,
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def test_handler_only_sets_a_flag(tmp_path: Path, restore_sigusr1: None) -> None:
    trainer = bare_trainer(tmp_path)
    callback = DeferredRequeue(requeue_command=["false"])
    module = L.LightningModule()
    callback.setup(trainer, module, "fit")
    assert callback.signalled is False
    os.kill(os.getpid(), signal.SIGUSR1)
    deadline = time.monotonic() + 5
    while not callback.signalled and time.monotonic() < deadline:
        time.sleep(0.01)  # the handler runs in the main thread at the next bytecode
    assert callback.signalled
    # nothing else happened: no checkpoint, no requeue, training not told to stop
    assert list(tmp_path.iterdir()) == []
    assert not callback.requeued and not trainer.should_stop
    callback.teardown(trainer, module, "fit")
    assert signal.getsignal(signal.SIGUSR1) is not callback._on_signal


def test_refuses_lightnings_own_requeue_handler(tmp_path: Path, restore_sigusr1: None) -> None:
    trainer = bare_trainer(tmp_path, plugins=[SLURMEnvironment(auto_requeue=True)])
    with pytest.raises(ValueError, match="auto_requeue=False"):
        DeferredRequeue().setup(trainer, L.LightningModule(), "fit")


def test_signal_defaults_to_the_slurm_environments(tmp_path: Path) -> None:
    previous = signal.getsignal(signal.SIGUSR2)
    trainer = bare_trainer(
        tmp_path, plugins=[SLURMEnvironment(auto_requeue=False, requeue_signal=signal.SIGUSR2)]
    )
    callback = DeferredRequeue()
    module = L.LightningModule()
    try:
        callback.setup(trainer, module, "fit")
        assert signal.getsignal(signal.SIGUSR2) == callback._on_signal
    finally:
        callback.teardown(trainer, module, "fit")
    assert signal.getsignal(signal.SIGUSR2) is previous


def test_slurm_partial_adds_the_callback_to_the_experiments(capsys: pytest.CaptureFixture[str]) -> None:
    configs = [CONFIGS / "demo.yaml", CONFIGS / "trainer" / "slurm.yaml"]
    code = main(["fit", *(a for path in configs for a in ("--config", str(path))), "--print_config"])
    assert code == 0
    trainer = yaml.safe_load(capsys.readouterr().out)["trainer"]
    [plugin] = trainer["plugins"]
    assert plugin["init_args"] == {"auto_requeue": False, "requeue_signal": "SIGUSR1"}
    assert [c["class_path"] for c in trainer["callbacks"]] == [
        "lightning.pytorch.callbacks.ModelCheckpoint",  # demo.yaml's, kept
        "findlit.training.slurm_requeue.DeferredRequeue",
    ]
    assert trainer["strategy"]["init_args"]["find_unused_parameters"] is True


class SignalRankOne(Callback):
    """Sends the requeue signal to global rank 1 only, as its batch after ``step`` steps starts, and
    records on every rank the step of each checkpoint it takes part in (``saved-rank<r>.txt``)."""

    def __init__(self, step: int, out: str) -> None:
        self.step = step
        self.out = Path(out)

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_rank == 1 and trainer.global_step == self.step:
            # delivered to this process at once: its handler runs before the step's all-reduce
            os.kill(os.getpid(), signal.SIGUSR1)

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        with open(self.out / f"saved-rank{trainer.global_rank}.txt", "a") as file:
            file.write(f"{checkpoint['global_step']}\n")


STUB = "import sys; open(sys.argv[1], 'a').write(' '.join(sys.argv[2:]) + '\\n')"
"""The stubbed ``scontrol requeue``: appends its arguments (the job id) to a file."""


@pytest.mark.slow
def test_ddp_signal_on_one_rank_checkpoints_all_ranks_requeues_and_stops(tmp_path: Path) -> None:
    requeued = tmp_path / "requeued.txt"
    config = small_config(
        tmp_path,
        val_images=2,
        val_batch_size=1,
        overrides={
            "max_steps": 6,
            "enable_checkpointing": False,
            # only the callbacks under test: no ModelCheckpoint to take part in checkpoints too
            "callbacks": [
                {
                    "class_path": "findlit.training.slurm_requeue.DeferredRequeue",
                    "init_args": {"requeue_command": [sys.executable, "-c", STUB, str(requeued)]},
                },
                {
                    "class_path": "tests.training.test_slurm_requeue.SignalRankOne",
                    "init_args": {"step": SIGNAL_STEP, "out": str(tmp_path)},
                },
            ],
        },
    )
    config["trainer"]["limit_val_batches"] = 0
    config["data"]["steps_per_epoch"] = 6
    config["data"]["num_workers"] = 1  # a worker per rank gets no say (it ignores the signal)
    config["test_after_fit"] = None
    path = write_config(config, tmp_path / "fit.yaml", tmp_path / "logs")
    command = findlit_command("fit", "--config", str(path), "--config", str(DDP), "--trainer.devices", "2")
    [(code, out, err)] = run_together([command], [run_env(SLURM_JOB_ID=JOB_ID)], timeout=400)
    assert code == 0, err[-4000:]

    # both ranks took part in one checkpoint, after the step during which rank 1 was signalled
    saved = SIGNAL_STEP + 1
    for rank in (0, 1):
        assert (tmp_path / f"saved-rank{rank}.txt").read_text().split() == [str(saved)], rank
    [checkpoint] = (tmp_path / "logs").glob("hpc_ckpt_*.ckpt")
    assert checkpoint.name == "hpc_ckpt_1.ckpt"
    assert torch.load(checkpoint, map_location="cpu", weights_only=False)["global_step"] == saved
    # rank 0 alone requeued the job, once; training stopped there instead of going on to max_steps
    assert requeued.read_text() == f"{JOB_ID}\n"
    assert f"Requeued SLURM job: {JOB_ID}" in out + err
    steps = logged_metrics(tmp_path / "logs")["step"]
    assert max(steps) == saved - 1, steps


def dataset_config(section: dict[str, Any]) -> DatasetConfig:
    """A data section's dataset entry (plain dicts, as in a config file) as the DataModule takes it."""
    fields = dict(section)
    fields["paths"] = DatasetPaths(**fields.get("paths", {}))
    fields["transforms"] = TransformConfig(**fields.get("transforms", {}))
    return DatasetConfig(**fields)


def write_pid_file(directory: Path) -> Any:
    """A SIGUSR1 handler like Lightning's: it does work (writes a file named by its process id)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        (directory / f"handled-{os.getpid()}").write_text("")

    return handler


def workers_after_sigusr1(loader: DataLoader[Any], directory: Path) -> tuple[list[int], list[bool]]:
    """Start ``loader``'s workers, send each SIGUSR1, then read one more batch: (pids, alive)."""
    iterator = iter(loader)
    workers = list(iterator._workers)  # type: ignore[attr-defined]
    # one batch per worker (round robin): every worker has run its worker_init_fn before the signal
    # (a signal in the instant between fork and worker_init_fn still meets the inherited handler)
    for _ in workers:
        next(iterator)
    for worker in workers:
        os.kill(worker.pid, signal.SIGUSR1)
    time.sleep(1.0)
    next(iterator)  # the loader still works
    alive = [worker.is_alive() for worker in workers]
    del iterator
    return [worker.pid for worker in workers], alive


@pytest.mark.slow
def test_loader_workers_ignore_sigusr1(tmp_path: Path, restore_sigusr1: None) -> None:
    handled = tmp_path / "handled"
    handled.mkdir()
    signal.signal(signal.SIGUSR1, write_pid_file(handled))

    # without the fix: a forked worker runs the trainer's handler itself
    plain = DataLoader(list(range(64)), batch_size=2, num_workers=2)
    pids, _ = workers_after_sigusr1(plain, handled)
    assert sorted(p.name for p in handled.iterdir()) == sorted(f"handled-{pid}" for pid in pids)
    for path in handled.iterdir():
        path.unlink()

    generate(tmp_path / "data", train=8, val=4, size=64, seed=0)
    data = data_section(tmp_path / "data")
    data["val"][0]["batch_size"] = 1  # a second batch to read after the signal
    datamodule = MultiTaskDataModule(
        root=data["root"],
        num_workers=2,
        train=[dataset_config(c) for c in data["train"][:1]],
        val=[dataset_config(c) for c in data["val"][:1]],
    )
    datamodule.setup("fit")
    for loader in (datamodule.train_dataloader(), datamodule.val_dataloader()[0]):
        pids, alive = workers_after_sigusr1(loader, handled)
        assert alive == [True, True], pids
        assert list(handled.iterdir()) == []


def test_init_worker_keeps_lightnings_worker_seeding(
    monkeypatch: pytest.MonkeyPatch, restore_sigusr1: None
) -> None:
    calls: list[tuple[int, int | None]] = []
    monkeypatch.setattr(
        datamodule_module,
        "pl_worker_init_function",
        lambda worker_id, rank=None: calls.append((worker_id, rank)),
    )
    previous_usr2 = signal.getsignal(signal.SIGUSR2)
    try:
        monkeypatch.setenv("PL_SEED_WORKERS", "0")
        init_worker(3, rank=1)
        assert calls == []
        assert signal.getsignal(signal.SIGUSR1) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGUSR2) is signal.SIG_IGN
        monkeypatch.setenv("PL_SEED_WORKERS", "1")
        init_worker(3, rank=1)
        assert calls == [(3, 1)]
    finally:
        signal.signal(signal.SIGUSR2, previous_usr2)
