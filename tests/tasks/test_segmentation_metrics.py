"""The segmentation task's evaluation helpers: semantic targets, and scoring at the size on disk."""

from __future__ import annotations

from typing import Any

import torch

from findlit.data.collate import Batch
from findlit.tasks.base import Vocabulary
from findlit.tasks.segmentation_metrics import (
    build_segmentation_metrics,
    semantic_map,
    update_segmentation_metrics,
)


def test_semantic_map_paints_labels_and_ignores() -> None:
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[0, :2, :3] = True
    masks[1, 2:, :3] = True
    ignore = torch.zeros(4, 4, dtype=torch.bool)
    ignore[0, 0] = True
    target = semantic_map(masks, torch.tensor([3, 1]), ignore)
    expected = torch.tensor([[255, 3, 3, 255], [3, 3, 3, 255], [1, 1, 1, 255], [1, 1, 1, 255]])
    assert torch.equal(target, expected)


class _Dataset:
    """What build_segmentation_metrics reads of a dataset."""

    def __init__(self, vocabulary: Vocabulary) -> None:
        self.vocabulary = vocabulary
        self.panoptic = True


def _one_image_batch(original: bool) -> tuple[Batch, list[dict[str, Any]]]:
    """A 4x4 image on disk, evaluated at 2x2: a 1-pixel "thing" segment vanishes in the resize.

    On disk: class 0 (stuff) everywhere but pixel (3, 3), class 1 (thing). The 2x2 target keeps
    only class 0 (the resize dropped the thing's mask). The prediction at 2x2 is all class 0.
    """
    disk = torch.zeros(2, 4, 4, dtype=torch.bool)
    disk[0] = True
    disk[0, 3, 3] = False
    disk[1, 3, 3] = True
    target: dict[str, Any] = {"masks": torch.ones(1, 2, 2, dtype=torch.bool), "labels": torch.tensor([0])}
    if original:
        target["original"] = {"masks": disk, "labels": torch.tensor([0, 1])}
    batch = Batch(
        task="segmentation",
        dataset="d",
        padding_mask=torch.zeros(1, 2, 2, dtype=torch.bool),
        image_ids=[1],
        image_sizes=[(2, 2)],
        orig_sizes=[(4, 4)],
        targets=[target],
    )
    segment_ids = torch.ones(2, 2, dtype=torch.int64)
    prediction = {
        "panoptic": (segment_ids, [{"id": 1, "category": 0, "isthing": False, "score": 0.9}]),
        "semantic": torch.zeros(2, 2, dtype=torch.int64),
        "instance": {
            "masks": torch.zeros(0, 2, 2, dtype=torch.bool),
            "labels": torch.zeros(0, dtype=torch.int64),
            "scores": torch.zeros(0),
        },
    }
    return batch, [prediction]


def _scores(original: bool) -> dict[str, float]:
    vocabulary = Vocabulary(["sky", "ball"], [False, True], [10, 20])
    metrics = build_segmentation_metrics(_Dataset(vocabulary), ["panoptic", "semantic"])  # type: ignore[arg-type]
    batch, predictions = _one_image_batch(original)
    update_segmentation_metrics(metrics, vocabulary, batch, predictions)
    return {key: float(value) for key, value in metrics.compute().items()}


def test_scored_at_the_size_on_disk_when_the_original_targets_are_there() -> None:
    """The thing the resize dropped counts (a missed segment) on disk, not at the input size."""
    at_input, on_disk = _scores(original=False), _scores(original=True)
    # at 2x2 the one stuff segment is matched exactly: PQ 1, mIoU 1
    assert at_input["PQ"] == 1.0 and at_input["mIoU"] == 1.0
    # on disk, the stuff class is still matched (IoU 15/16 > 0.5) and the thing is a false negative:
    # PQ = mean over the two classes of (15/16, 0), mIoU = mean of (15/16, 0)
    assert abs(on_disk["PQ"] - 15 / 32) < 1e-6
    assert abs(on_disk["mIoU"] - 15 / 32) < 1e-6
