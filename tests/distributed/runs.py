"""Helpers of the distributed tests: tiny configs, ``findlit`` in subprocesses, logged metrics.

Every run is a separate ``python -m findlit`` process: Lightning's DDP launcher re-runs the
command for the other local ranks, which needs a real command line, and each run gets a fresh
process group. Runs use one intra-op thread, so that a 1-process and a 2-process run do the same
floating-point reductions (and share the machine's cores fairly).
"""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from findlit.data.synthetic import generate
from tests.cli.test_train import tiny_config
from tests.fixtures import REPO

DDP = REPO / "configs" / "trainer" / "ddp.yaml"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_env(**extra: str) -> dict[str, str]:
    """The test's environment (offline hubs included) with one thread per process and ``extra``."""
    env = dict(os.environ)
    # a multi-node run must not inherit a launcher's variables from whoever started pytest
    for name in ("LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    env.update(extra)
    return env


def findlit_command(*argv: str) -> list[str]:
    """``python -m findlit <argv>``."""
    return [sys.executable, "-m", "findlit", *argv]


def run_findlit(*argv: str, timeout: float = 300, env: Mapping[str, str] | None = None) -> str:
    """Run ``findlit <argv>`` to completion; its stderr tail in the assertion message if it fails."""
    [(code, out, err)] = run_together([findlit_command(*argv)], [env or run_env()], timeout)
    assert code == 0, f"findlit {' '.join(argv)} failed:\n{err[-4000:]}"
    return out


def run_together(
    commands: Sequence[Sequence[str]], envs: Sequence[Mapping[str, str]], timeout: float
) -> list[tuple[int, str, str]]:
    """Run ``commands`` at once (e.g. the nodes of one job); (return code, stdout, stderr) of each.

    Each command gets a session of its own, so that on a timeout (a deadlocked collective) the
    process and the ranks Lightning launched from it are all killed, not left waiting.
    """
    processes = [
        subprocess.Popen(
            list(command),
            cwd=REPO,
            env=dict(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for command, env in zip(commands, envs, strict=True)
    ]
    deadline = time.monotonic() + timeout
    results = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.append((process.returncode, out, err))
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
    return results


def small_config(
    tmp_path: Path,
    *,
    val_images: int,
    val_batch_size: int,
    train_batch_size: int = 2,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """tests/cli/test_train.py's tiny config over ``val_images`` generated validation images.

    Every validation batch is kept (``limit_val_batches: 1.0``): a metric over part of a shard
    would not be comparable across world sizes. ``overrides`` updates the ``trainer`` section.
    """
    config: dict[str, Any] = yaml.safe_load(tiny_config(tmp_path / "base").read_text())
    root = tmp_path / "data"
    generate(root, train=8, val=val_images, size=64, seed=0)
    data = config["data"]
    data["root"] = str(root)
    for dataset in data["train"]:
        dataset["batch_size"] = train_batch_size
    for dataset in data["val"]:
        dataset["batch_size"] = val_batch_size
    data["test"] = data["val"]
    config["trainer"].update(limit_val_batches=1.0, limit_test_batches=1.0, **(overrides or {}))
    return config


def write_config(config: Mapping[str, Any], path: Path, logs: Path) -> Path:
    """``config`` with its logs (CSVLogger and checkpoints) under ``logs``, written to ``path``."""
    config = dict(config)
    trainer = dict(config["trainer"])
    trainer["default_root_dir"] = str(logs)
    trainer["logger"] = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(logs), "name": "run", "version": 0},
    }
    config["trainer"] = trainer
    path.write_text(yaml.safe_dump(config))
    return path


def logged_metrics(logs: Path) -> dict[str, list[float]]:
    """Every value of every column of the CSVLogger's ``metrics.csv`` under ``logs``, in row order."""
    values: dict[str, list[float]] = {}
    with open(logs / "run" / "version_0" / "metrics.csv") as file:
        for row in csv.DictReader(file):
            for key, value in row.items():
                if value not in ("", None):
                    values.setdefault(key, []).append(float(value))
    return values


def evaluation_metrics(logs: Path, prefix: str = "val/") -> dict[str, float]:
    """The last logged value of every ``prefix`` column."""
    return {key: values[-1] for key, values in logged_metrics(logs).items() if key.startswith(prefix)}


def differences(
    reference: Mapping[str, float], other: Mapping[str, float], keys: Sequence[str] | None = None
) -> dict[str, float]:
    """``|reference - other|`` per key (``keys`` default: the reference's)."""
    return {key: abs(reference[key] - other[key]) for key in (keys or sorted(reference))}


def fit_checkpoint(config: Mapping[str, Any], tmp_path: Path, steps: int) -> Path:
    """Fit ``config`` for ``steps`` steps (no validation) under ``tmp_path/fit``; its one checkpoint."""
    fit = write_config(config, tmp_path / "fit.yaml", tmp_path / "fit")
    run_findlit(
        "fit", "--config", str(fit), "--trainer.max_steps", str(steps), "--trainer.limit_val_batches", "0"
    )
    [checkpoint] = (tmp_path / "fit").rglob("*.ckpt")
    return checkpoint


def run_one_and_two_processes(
    subcommand: str, config: Mapping[str, Any], checkpoint: Path, tmp_path: Path
) -> list[tuple[int, str, str]]:
    """Run ``findlit <subcommand>`` of ``config`` on ``checkpoint`` in 1 process (logs in
    ``tmp_path/one``) and, at the same time, in 2 DDP processes (``tmp_path/two``); asserts both
    succeeded and returns their (exit code, stdout, stderr)."""
    one = write_config(config, tmp_path / "one.yaml", tmp_path / "one")
    two = write_config(config, tmp_path / "two.yaml", tmp_path / "two")
    commands = [
        findlit_command(subcommand, "--config", str(one), "--ckpt_path", str(checkpoint)),
        findlit_command(
            subcommand,
            *("--config", str(two), "--config", str(DDP)),
            *("--trainer.devices", "2", "--ckpt_path", str(checkpoint)),
        ),
    ]
    results = run_together(commands, [run_env(), run_env()], timeout=400)
    for code, _, err in results:
        assert code == 0, err[-4000:]
    return results
