"""``findlit predict --config`` under DDP (2 CPU processes, gloo) writes what one process writes.

Three photos (the two real COCO photos and a renamed copy of one), so the ranks' shards are uneven
(2 and 1 images): each rank writes its own images, and rank 0 reports the total.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from tests.distributed.runs import fit_checkpoint, run_one_and_two_processes, small_config
from tests.fixtures import COCO_SAMPLE


@pytest.mark.slow
def test_two_process_predict_writes_the_outputs_of_one_process(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    shutil.copytree(COCO_SAMPLE / "val2017", photos)
    shutil.copy(photos / "000000142238.jpg", photos / "copy.jpg")
    config = small_config(tmp_path, val_images=2, val_batch_size=2)
    checkpoint = fit_checkpoint(config, tmp_path, steps=1)

    config["data"]["predict"] = [
        {
            "name": "photos",
            "images": [str(photos)],
            "prompts": ["the rugby ball in the air", "the red truck on the left"],
            "classes": ["person", "horse"],
            "stuff": ["grass", "sky"],
            "batch_size": 2,
        }
    ]
    results = run_one_and_two_processes("predict", config, checkpoint, tmp_path)
    for (_, out, _), logs in zip(results, (tmp_path / "one", tmp_path / "two"), strict=True):
        folder = logs / "run" / "version_0" / "predictions" / "photos"
        assert f"predictions of photos: 3 images (overlay PNG + RLE JSON each) in {folder}" in out

    single = tmp_path / "one" / "run" / "version_0" / "predictions" / "photos"
    ddp = tmp_path / "two" / "run" / "version_0" / "predictions" / "photos"
    names = sorted(path.name for path in single.iterdir())
    assert names == sorted(
        f"{stem}{suffix}" for stem in ("000000142238", "000000439180", "copy") for suffix in (".json", ".png")
    )
    assert sorted(path.name for path in ddp.iterdir()) == names
    for name in names:
        if name.endswith(".json"):
            expected, got = (json.loads((folder / name).read_text()) for folder in (single, ddp))
            assert [m["label"] for m in got["masks"]] == [m["label"] for m in expected["masks"]]
            for mine, theirs in zip(got["masks"], expected["masks"], strict=True):
                assert mine["score"] == pytest.approx(theirs["score"], abs=1e-4)
                # every photo is padded to the same square frame in both runs, whatever its batch:
                # only float rounding of batched kernels could move a pixel on a decision boundary
                assert (decode(mine) != decode(theirs)).mean() < 1e-3


def decode(entry: dict[str, Any]) -> np.ndarray:
    """The bool[H,W] mask of an entry of a prediction JSON (COCO compressed RLE)."""
    rle = dict(entry["segmentation"], counts=entry["segmentation"]["counts"].encode("ascii"))
    return mask_utils.decode(rle).astype(bool)
