"""``findlit test`` and ``findlit predict`` give the same mask pixels for the same image and prompt.

Both predict at the transformed size and resize the masks to the size on disk; they once did it
with two conventions (corner rule and pixel centres), so the same model gave masks shifted by up to
half a pixel of the transformed image (about 3 pixels of a COCO photo at image_size 100).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import lightning as L  # noqa: N812
import numpy as np
from pycocotools import mask as mask_utils

from findlit.cli.config import build_datamodule
from findlit.inference.predictor import Predictor
from findlit.outputs.test_results import TestResultsWriter
from tests.training.test_module import tiny_encoder_module

IMAGE_SIZE = 100  # the photos are 640 wide: masks are upscaled by 6.4 or 4.27


def _refs_datamodule(coco_sample: Path) -> Any:
    refs = {
        "name": "refs",
        "task": "grounding",
        "format": "refcoco",
        "batch_size": 1,
        "paths": {
            "refs": "annotations/refs(umd).p",
            "instances_json": "annotations/panoptic_detection_format_val2017.json",
            "image_root": "val2017",
            "split": "val",
        },
        "transforms": {"image_size": IMAGE_SIZE, "lsj": False},
    }
    return build_datamodule({"root": str(coco_sample), "num_workers": 0, "test": [refs]})


def test_findlit_test_and_predict_write_the_same_mask_pixels(tmp_path: Path, coco_sample: Path) -> None:
    module = tiny_encoder_module()
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[TestResultsWriter(directory=str(tmp_path / "run"), overlays=0)],
    )
    trainer.test(module, datamodule=_refs_datamodule(coco_sample), verbose=False)
    written = json.loads((tmp_path / "run" / "predictions" / "refs" / "grounding_results.json").read_text())
    sentences_of: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for entry in written:
        sentences_of[entry["image_id"]].append(entry)
    assert sentences_of

    # the predictor as `findlit predict` runs it, at the test's resize and padding (one image a batch)
    predictor = Predictor(module, image_size=IMAGE_SIZE, device="cpu", pad_to_square=False)
    compared = 0
    for image_id, entries in sentences_of.items():
        prediction = predictor.predict(
            coco_sample / "val2017" / f"{image_id:012d}.jpg", [e["sentence"] for e in entries]
        )
        for entry, mask in zip(entries, prediction.masks.numpy(), strict=True):
            rle = entry["segmentation"]
            tested = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(
                bool
            )
            assert tested.shape == mask.shape == prediction.size
            assert np.array_equal(tested, mask), (image_id, entry["sentence"])
            compared += int(0 < mask.sum() < mask.size)  # a mask with an edge, where conventions differ
    assert compared > 0
