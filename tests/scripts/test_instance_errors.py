"""scripts/diagnose/instance_errors.py on a hand-built image: a found thing, its repeat, a miss."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools import mask as coco_mask

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts" / "diagnose"))

import instance_errors

SIZE = 20


def rectangle(top: int, left: int, bottom: int, right: int) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[top:bottom, left:right] = 1
    return mask


def rle(mask: np.ndarray) -> dict[str, Any]:
    encoded = coco_mask.encode(np.asfortranarray(mask))
    return {"size": encoded["size"], "counts": encoded["counts"].decode()}


@pytest.fixture
def ground_truth(tmp_path: Path) -> Any:
    things = [rectangle(0, 0, 8, 8), rectangle(10, 10, 18, 18)]
    data = {
        "images": [{"id": 1, "width": SIZE, "height": SIZE, "file_name": "a.png"}],
        "categories": [{"id": 1, "name": "square"}, {"id": 2, "name": "circle"}, {"id": 101, "name": "sky"}],
        "annotations": [
            {
                "id": i + 1,
                "image_id": 1,
                "category_id": 1,
                "segmentation": rle(m),
                "area": int(m.sum()),
                "bbox": [0, 0, 1, 1],
                "iscrowd": 0,
            }
            for i, m in enumerate(things)
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return instance_errors.load_ground_truth(path, max_thing_id=100)


def detections() -> list[dict[str, Any]]:
    first = rle(rectangle(0, 0, 8, 8))
    return [
        {"image_id": 1, "category_id": 1, "segmentation": first, "score": 0.9},
        {"image_id": 1, "category_id": 1, "segmentation": rle(rectangle(0, 0, 8, 7)), "score": 0.8},  # repeat
        {"image_id": 1, "category_id": 2, "segmentation": rle(rectangle(10, 10, 18, 18)), "score": 0.7},
    ]


def test_stuff_categories_are_left_out(ground_truth: Any) -> None:
    assert ground_truth.getCatIds() == [1, 2]


def test_outcomes_repeats_oracle_and_nms(ground_truth: Any) -> None:
    found = detections()
    counts = instance_errors.outcome_counts(ground_truth, found, top=3)
    assert counts == {"true positive": 2, "repeat": 1}
    # the third detection has the wrong class: the oracle gives it the thing's
    assert [d["category_id"] for d in instance_errors.oracle_labels(ground_truth, found)] == [1, 1, 1]
    assert [d["score"] for d in instance_errors.per_class_nms(found, 0.5)] == [0.9, 0.7]
    assert instance_errors.per_class_nms(found, 0.9) == found  # IoU 56/64 = 0.875 is kept
    # both things found with the right class and nothing else: AP 1
    oracle_kept = instance_errors.per_class_nms(instance_errors.oracle_labels(ground_truth, found), 0.5)
    assert instance_errors.mask_ap(ground_truth, oracle_kept)[0] == pytest.approx(1.0)
    assert instance_errors.mask_ap(ground_truth, found)[0] < 1.0
    assert instance_errors.thing_best_ious(ground_truth, found).tolist() == [1.0, 1.0]
