"""Checkpoint and requeue a SLURM job on its requeue signal, outside the signal handler.

SLURM sends the requeue signal (``--signal=SIGUSR1@90``, or a preemption notice) to every task of a
job. Lightning's own handler (``SLURMEnvironment(auto_requeue=True)``) saves the checkpoint *inside*
the signal handler, which includes a barrier across the ranks. Python runs a handler only between
bytecodes, so a rank that is blocked in DDP's gradient all-reduce runs it late, after its peers
have entered the handler's barrier; the collectives of the two no longer pair up and the job hangs
until SLURM kills it (Lightning issue #21406).

:class:`DeferredRequeue` splits the work: its handler only sets a flag, and at the end of a training
step (where every rank is between collectives) the ranks agree on the flag with one all-reduce. If
any rank got the signal, all of them save ``hpc_ckpt_<n>.ckpt`` in ``trainer.default_root_dir``
(the file Lightning resumes from when the job runs again under SLURM), global rank 0 requeues the
job, and training stops. Use it with ``SLURMEnvironment(auto_requeue=False)``, as
``configs/trainer/slurm.yaml`` does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

REQUEUE_COMMAND = ("scontrol", "requeue")
"""The command that requeues a job; the job id is appended."""


def slurm_job_id() -> str | None:
    """This job's id as ``scontrol`` takes it (``<array job>_<task>`` for an array task), or None."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job is not None and "SLURM_ARRAY_TASK_ID" in os.environ:
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


class DeferredRequeue(Callback):
    """On ``signum``, checkpoint every rank at the next training step, requeue the job and stop.

    Args:
        signum: the requeue signal (SLURM's ``--signal``), a name such as ``SIGUSR1`` in configs;
            default: the ``requeue_signal`` of the trainer's SLURMEnvironment, else SIGUSR1.
        check_every_n_steps: agree on the flag every this many optimizer steps. One all-reduce of a
            single number per check, tens of microseconds, is noise next to a training step, so the
            default checks every step; raise it only if steps are that short and SLURM's warning
            (90 s with ``--signal=SIGUSR1@90``) is much longer than ``n`` steps.
        requeue_command: run by global rank 0 with the job id appended, after the checkpoint is
            written. Tests replace it with a stub.

    """

    def __init__(
        self,
        signum: signal.Signals | None = None,
        check_every_n_steps: int = 1,
        requeue_command: Sequence[str] = REQUEUE_COMMAND,
    ) -> None:
        if check_every_n_steps < 1:
            raise ValueError(f"check_every_n_steps must be at least 1, got {check_every_n_steps}")
        self.signum = None if signum is None else signal.Signals(signum)
        self.check_every_n_steps = check_every_n_steps
        self.requeue_command = list(requeue_command)
        self.signalled = False
        self.requeued = False
        self._last_checked_step = -1
        self._previous_handler: Any = None
        self._installed: signal.Signals | None = None
        """The signal whose handler :meth:`setup` installed."""

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only a flag: anything more (a collective, file I/O, even logging, which takes locks) can
        # deadlock when the signal interrupts this rank inside the same machinery.
        self.signalled = True

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Install the handler for ``fit``, refusing Lightning's own requeue handler alongside it."""
        if stage != "fit":
            return
        # the environment Lightning's signal connector looks at to decide on its own handler
        environment = trainer._accelerator_connector.cluster_environment
        if isinstance(environment, SLURMEnvironment) and environment.auto_requeue:
            raise ValueError(
                "DeferredRequeue replaces Lightning's SLURM requeue handler: set "
                "SLURMEnvironment(auto_requeue=False) in trainer.plugins (configs/trainer/slurm.yaml does)"
            )
        if threading.current_thread() is not threading.main_thread():
            rank_zero_warn("DeferredRequeue: not in the main thread, so no signal handler; requeue is off")
            return
        configured = environment.requeue_signal if isinstance(environment, SLURMEnvironment) else None
        signum = signal.Signals(self.signum or configured or signal.SIGUSR1)
        self.signalled = self.requeued = False
        self._last_checked_step = -1
        self._previous_handler = signal.signal(signum, self._on_signal)
        self._installed = signum
        rank_zero_info(f"DeferredRequeue: {signum.name} checkpoints, requeues and stops at the next step")

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Give the signal back to whoever had it before :meth:`setup`."""
        if self._installed is None:
            return
        signal.signal(self._installed, self._previous_handler)
        self._installed = None

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Agree on the flag across ranks; if any rank was signalled, checkpoint, requeue and stop."""
        step = trainer.global_step
        # Every rank reaches this hook after the same batches, so checking on the step count keeps
        # the all-reduce paired on all ranks. Checking only when the step advanced skips the batches
        # in the middle of gradient accumulation, whose state a checkpoint would not hold.
        if self.requeued or step == self._last_checked_step or step % self.check_every_n_steps:
            return
        self._last_checked_step = step
        if not trainer.strategy.reduce_boolean_decision(self.signalled, all=False):
            return
        self._checkpoint_and_requeue(trainer)

    def _checkpoint_and_requeue(self, trainer: Trainer) -> None:
        # Lightning's own choice of the next hpc_ckpt_<n>, so that its resume logic (the newest one in
        # default_root_dir) finds it; chosen on rank 0 alone, since on a shared filesystem another
        # rank could look after rank 0 has written and pick the next number
        path = trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir)
        path = trainer.strategy.broadcast(path, src=0)
        name = self._installed.name if self._installed is not None else "requeue signal"
        rank_zero_info(f"DeferredRequeue: {name} received; saving {path} at step {trainer.global_step}")
        trainer.save_checkpoint(path)  # every rank takes part; the strategy writes on rank 0
        self.requeued = True
        trainer.should_stop = True
        if trainer.is_global_zero:
            # the requeue ends this run soon (SIGTERM, then SIGKILL): write out what was logged
            for logger in trainer.loggers:
                logger.finalize("finished")
            self._requeue()

    def _requeue(self) -> None:
        job_id = slurm_job_id()
        if job_id is None:
            rank_zero_warn("DeferredRequeue: not a SLURM job (no SLURM_JOB_ID), so nothing to requeue")
            return
        command = [*self.requeue_command, job_id]
        try:
            code = subprocess.run(command, check=False).returncode
        except FileNotFoundError:
            rank_zero_warn(f"DeferredRequeue: {command[0]} not found; job {job_id} not requeued")
            return
        if code == 0:
            rank_zero_info(f"Requeued SLURM job: {job_id}")
        else:
            rank_zero_warn(f"DeferredRequeue: {' '.join(command)} failed with code {code}")
