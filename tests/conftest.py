"""Shared fixtures: the real COCO sample in ../shared/data (tests fail, not skip, without it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures import COCO_SAMPLE, copy_sample


@pytest.fixture(scope="session")
def coco_sample() -> Path:
    """The two real COCO val2017 images with their annotations in every format (read-only)."""
    assert COCO_SAMPLE.is_dir(), f"the real-format fixture is missing: {COCO_SAMPLE}"
    return COCO_SAMPLE


@pytest.fixture
def coco_copy(tmp_path: Path) -> Path:
    """A writable copy of the COCO sample, for tests that corrupt it."""
    return copy_sample(tmp_path)
