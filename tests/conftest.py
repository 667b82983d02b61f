"""Shared fixtures: the real COCO sample in ../shared/data (tests fail, not skip, without it)."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COCO_SAMPLE = REPO.parent / "shared" / "data" / "coco_panoptic_sample"


@pytest.fixture(scope="session")
def coco_sample() -> Path:
    """The two real COCO val2017 images with their annotations in every format (read-only)."""
    assert COCO_SAMPLE.is_dir(), f"the real-format fixture is missing: {COCO_SAMPLE}"
    return COCO_SAMPLE


@pytest.fixture
def coco_copy(coco_sample: Path, tmp_path: Path) -> Path:
    """A writable copy of the COCO sample, for tests that corrupt it."""
    target = tmp_path / "coco"
    shutil.copytree(coco_sample, target)
    for path in [target, *target.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)
    return target
