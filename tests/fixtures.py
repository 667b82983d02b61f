"""Paths and helpers shared by the tests (the fixtures that use them are in conftest.py)."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import torch

from findlit.encoders.checkpoint import CHECKPOINT_KEY

REPO = Path(__file__).resolve().parents[1]
COCO_SAMPLE = REPO / "tests" / "data" / "coco_sample"


def copy_sample(tmp_path: Path) -> Path:
    """A writable copy of the real COCO sample under ``tmp_path`` (the shared files are read-only).

    Fails, never skips, when the sample is missing: every reader must be tested on it.
    """
    assert COCO_SAMPLE.is_dir(), f"the real-format fixture is missing: {COCO_SAMPLE}"
    root = tmp_path / "coco_panoptic_sample"
    shutil.copytree(COCO_SAMPLE, root)
    for folder, _, files in os.walk(root):
        os.chmod(folder, os.stat(folder).st_mode | stat.S_IWUSR | stat.S_IXUSR)
        for name in files:
            path = os.path.join(folder, name)
            os.chmod(path, os.stat(path).st_mode | stat.S_IWUSR)
    return root


def other_encoder_checkpoint(checkpoint: Path, folder: Path) -> Path:
    """A copy of ``checkpoint`` in ``folder`` that records another vision encoder's weights digest."""
    content = torch.load(checkpoint, weights_only=True)
    content[CHECKPOINT_KEY]["vision_encoder"]["weights_digest"] = "0" * 64
    other = folder / "other_encoder.ckpt"
    torch.save(content, other)
    return other


def kill_writer_midway(code: str, target: Path) -> int:
    """Run ``code`` (``python -c``, ``sys.argv[1]`` = ``target``) until it prints "half written", SIGKILL it.

    The source tree comes first on its path, as in the tests' own process. Returns its pid.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    writer = subprocess.Popen(
        [sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, text=True, cwd=REPO, env=env
    )
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "half written"
        writer.send_signal(signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait(timeout=60)
    assert writer.returncode == -signal.SIGKILL
    return writer.pid
