"""Run a 2-process gloo script of this folder and load the gradients it saved (DDP loss tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from tests.distributed.runs import free_port


def run_two_rank_script(name: str, out: Path) -> Any:
    """Run ``tests/losses/<name>`` with ``(out, a free port)``, assert it succeeded, load ``out``."""
    script = Path(__file__).with_name(name)
    result = subprocess.run(
        [sys.executable, str(script), str(out), str(free_port())],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(out)
