"""A callback that holds the first run of a SLURM job still at one step, for the preemption test.

Lightning handles the requeue signal inside the signal handler: it saves the checkpoint there, with a
barrier across the ranks. A rank that is waiting in a collective (DDP's gradient all-reduce, behind a
slower rank 0) runs no Python signal handler until that collective returns, so a signal landing then
deadlocks the job (Lightning issue #21406). This callback puts every rank in a plain sleep after a
barrier and says so with a marker file, so the test signals the job when no rank can be in a
collective. A requeued run (SLURM_RESTART_COUNT > 0) does not pause.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

MARKER = "paused"
"""File written in trainer.default_root_dir once every rank is paused."""


class PauseFirstRun(Callback):
    """After training step ``step`` of a job's first run, sleep up to ``seconds`` on every rank."""

    def __init__(self, step: int = 3, seconds: float = 120.0) -> None:
        self.step = step
        self.seconds = seconds

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if trainer.global_step != self.step or int(os.environ.get("SLURM_RESTART_COUNT", "0")) > 0:
            return
        trainer.strategy.barrier("PauseFirstRun")
        if trainer.is_global_zero:
            (Path(trainer.default_root_dir) / MARKER).write_text(f"{trainer.global_step}\n")
        # a signal's handler runs within the sleep, which then goes on until SLURM kills the job
        time.sleep(self.seconds)
