"""Validation under DDP (2 CPU processes, gloo) gives the metrics of one process on the same data.

Five validation images per dataset: with two ranks a padding sampler would repeat one image, and
upstream MeanAveragePrecision's per-image sync would fail on ranks of 3 and 2 images.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.distributed.runs import evaluation_metrics, fit_checkpoint, run_one_and_two_processes, small_config

LOSS_TOLERANCE = 1e-4
"""Relative tolerance of the evaluation losses: each image's random points are seeded by its record
index (the batch's ``sample_seeds``), so any rank draws the points one process draws; what differs is
the order of the sums (measured about 1e-7)."""


@pytest.mark.slow
def test_two_process_validation_equals_one_process(tmp_path: Path) -> None:
    config = small_config(tmp_path, val_images=5, val_batch_size=1)
    checkpoint = fit_checkpoint(config, tmp_path, steps=2)
    run_one_and_two_processes("validate", config, checkpoint, tmp_path)

    single, ddp = evaluation_metrics(tmp_path / "one"), evaluation_metrics(tmp_path / "two")
    assert set(single) == set(ddp)
    for dataset in ("demo_panoptic", "demo_captions", "demo_refs", "demo_entities"):
        assert f"val/{dataset}/loss" in single
    for key in ("demo_panoptic/PQ", "demo_panoptic/AP", "demo_panoptic/mIoU", "demo_captions/IR@1"):
        assert f"val/{key}" in single
    # not all zero: the comparison has something to compare
    assert any(value > 0 for key, value in single.items() if not key.endswith("loss"))
    for key, value in single.items():
        if key.endswith("/loss"):
            assert math.isclose(ddp[key], value, rel_tol=LOSS_TOLERANCE), (key, value, ddp[key])
        else:
            # gathered states equal the one process's (retrieval over the whole gallery, AP and
            # PQ counting each image once); what differs is the summation order of sums
            assert ddp[key] == pytest.approx(value, abs=1e-6), (key, value, ddp[key])
