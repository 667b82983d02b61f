"""scripts/slurm/fit.sbatch on a real single-node SLURM cluster (scripts/slurm/local_cluster.sh).

Run by `make test-slurm`, which starts the cluster, sets FINDLIT_SLURM_TEST=1 and SLURM_CONF, and stops
the cluster afterwards; skipped otherwise. Each job is a 2-task CPU DDP fit (gloo) of the embedded
default's recipe over a tiny generated dataset with a tiny interface and test encoder.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from tests.cli.test_train import tiny_config as shared_tiny_config
from tests.fixtures import REPO

pytestmark = pytest.mark.skipif(
    os.environ.get("FINDLIT_SLURM_TEST") != "1", reason="needs the local SLURM cluster: run `make test-slurm`"
)

SBATCH = REPO / "scripts" / "slurm" / "fit.sbatch"
CONFIGS = REPO / "configs"
FINDLIT = Path(sys.executable).with_name("findlit")
WAIT = 300.0
"""Seconds the test waits for each thing a job does (start training, requeue, complete)."""


@pytest.fixture(autouse=True)
def cluster() -> Iterator[list[str]]:
    """The job ids a test submits; the ones still queued or running are cancelled after it.

    Asked for (FINDLIT_SLURM_TEST=1), the cluster must be there: fail, don't skip.
    """
    assert shutil.which("sbatch"), "no sbatch: scripts/slurm/local_cluster.sh start installs SLURM"
    assert "SLURM_CONF" in os.environ, 'no SLURM_CONF: eval "$(scripts/slurm/local_cluster.sh env)"'
    slurm("sinfo")  # the controller answers
    jobs: list[str] = []
    yield jobs
    for job_id in jobs:
        subprocess.run(["scancel", job_id], check=False, capture_output=True)


def tiny_config(tmp_path: Path, max_steps: int) -> Path:
    """tests/cli/test_train.py's tiny config over 16 images: one epoch of max_steps steps."""
    path = shared_tiny_config(tmp_path, train_images=16)
    config: dict[str, Any] = yaml.safe_load(path.read_text())
    config["data"]["steps_per_epoch"] = max_steps
    # DataLoader workers as in configs/demo.yaml: SLURM signals them too, and they must ignore it
    config["data"]["num_workers"] = 2
    logs = config["trainer"]["default_root_dir"]
    config["trainer"].update(
        max_steps=max_steps,
        # every step's metrics on disk at once: the test reads them to know training has started
        logger={
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {"save_dir": logs, "flush_logs_every_n_steps": 1},
        },
        num_sanity_val_steps=0,
    )
    path.write_text(yaml.safe_dump(config))
    return path


def slurm(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def submit(jobs: list[str], tmp_path: Path, config: Path, *args: str) -> tuple[str, Path]:
    """sbatch fit.sbatch with the config, the SLURM partial and ``args``: the job id and its output file."""
    output = tmp_path / "job.out"
    env = os.environ | {
        "FINDLIT": str(FINDLIT),
        # one node: DDP's rendezvous and gloo stay on loopback whatever the host name resolves to
        "MASTER_ADDR": "127.0.0.1",
        "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    out = subprocess.run(
        [
            "sbatch",
            "--parsable",
            f"--output={output}",
            f"--chdir={tmp_path}",
            "--time=15",
            str(SBATCH),
            "--config",
            str(config),
            "--config",
            str(CONFIGS / "trainer" / "slurm.yaml"),
            *args,
        ],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    job_id = out.strip().split(";")[0]
    jobs.append(job_id)
    return job_id, output


def job_fields(job_id: str) -> dict[str, str]:
    """`scontrol show job`'s KEY=VALUE pairs (there is no accounting database to ask instead)."""
    text = slurm("scontrol", "show", "job", "--oneliner", job_id)
    return dict(re.findall(r"(\w+)=(\S*)", text))


def wait_for(job_id: str, output: Path, condition: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if condition():
            return
        state = job_fields(job_id)["JobState"]
        if state in {"FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL"}:
            break
        time.sleep(0.5)
    log = output.read_text() if output.exists() else "(no output)"
    pytest.fail(f"job {job_id}: {what} did not happen; {job_fields(job_id)}\n{log[-6000:]}")


def completed(job_id: str) -> bool:
    return job_fields(job_id)["JobState"] == "COMPLETED"


def logged_steps(version_dir: Path) -> list[int]:
    """The steps whose train loss a run logged (CSVLogger's metrics.csv)."""
    path = version_dir / "metrics.csv"
    if not path.exists():
        return []
    with open(path) as file:
        return [int(row["step"]) for row in csv.DictReader(file) if row.get("train/loss")]


def last_checkpoint_step(version_dir: Path) -> int:
    """The largest global step of the checkpoints a run saved (whatever their names)."""
    paths = list((version_dir / "checkpoints").glob("*.ckpt"))
    assert paths, f"no checkpoint in {version_dir}"
    return max(torch.load(p, map_location="cpu", weights_only=False)["global_step"] for p in paths)


@pytest.mark.slow
def test_two_task_fit_job_completes(cluster: list[str], tmp_path: Path) -> None:
    config = tiny_config(tmp_path, max_steps=3)
    job_id, output = submit(cluster, tmp_path, config)
    wait_for(job_id, output, lambda: completed(job_id), "completion")
    log = output.read_text()
    fields = job_fields(job_id)
    assert fields["NumTasks"] == "2" and fields["Restarts"] == "0", fields
    # both ranks of one DDP group, in the SLURM environment
    assert "Initializing distributed: GLOBAL_RANK: 0, MEMBER: 1/2" in log, log
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in log, log
    assert "DeferredRequeue: SIGUSR1 checkpoints, requeues and stops at the next step" in log, log
    assert "SLURM auto-requeueing enabled" not in log, log  # Lightning's handler is off
    run = tmp_path / "logs" / "lightning_logs" / "version_0"
    assert last_checkpoint_step(run) == 3
    assert logged_steps(run) == [0, 1, 2]


@pytest.mark.slow
def test_preempted_job_checkpoints_requeues_and_resumes(cluster: list[str], tmp_path: Path) -> None:
    max_steps = 16
    config = tiny_config(tmp_path, max_steps=max_steps)
    job_id, output = submit(cluster, tmp_path, config)
    first = tmp_path / "logs" / "lightning_logs" / "version_0"
    wait_for(job_id, output, lambda: len(logged_steps(first)) >= 2, "two training steps")

    # what SLURM does at --signal=SIGUSR1@90 or on preemption: SIGUSR1 to every process of the job
    # (ranks and DataLoader workers), while the ranks are training, wherever each one is in its step
    slurm("scancel", "--signal=USR1", job_id)
    wait_for(job_id, output, lambda: job_fields(job_id)["Restarts"] == "1", "the requeue")
    checkpoints = list((tmp_path / "logs").glob("hpc_ckpt_*.ckpt"))
    assert [p.name for p in checkpoints] == ["hpc_ckpt_1.ckpt"]  # none from the workers
    saved = torch.load(checkpoints[0], map_location="cpu", weights_only=False)["global_step"]
    assert 2 <= saved < max_steps, saved

    wait_for(job_id, output, lambda: completed(job_id), "completion of the requeued job")
    log = output.read_text()
    assert log.count("fit.sbatch: job") == 3, log  # two starts and one end
    # rank 0 of the first run, once, for both ranks
    assert log.count(f"DeferredRequeue: SIGUSR1 received; saving {checkpoints[0]} at step {saved}") == 1, log
    assert f"Requeued SLURM job: {job_id}" in log, log
    assert f"Restoring states from the checkpoint path at {checkpoints[0]}" in log, log
    # the first run stopped at the checkpoint's step (Lightning logs a step's metrics after the hook
    # that checkpointed, and the requeue may kill the run before); the requeued run went on from
    # there, not from 0, and finished the schedule
    steps = logged_steps(first)
    assert steps == list(range(len(steps))) and saved - 1 <= len(steps) <= saved, (steps, saved)
    second = tmp_path / "logs" / "lightning_logs" / "version_1"
    assert logged_steps(second) == list(range(saved, max_steps))
    assert last_checkpoint_step(second) == max_steps
