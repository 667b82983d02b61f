"""SemanticIoU equals torchmetrics' MulticlassJaccardIndex (macro) and the confusion-matrix definition."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassJaccardIndex

from findlit.metrics import SemanticIoU

CLASSES = 7
IGNORE = 255


def _batches(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Three batches of int64[2,24,32] predictions and targets; classes 5 and 6 never appear,
    class 4 only in predictions; some target pixels ignored."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(3):
        target = torch.randint(0, 4, (2, 24, 32), generator=generator)
        preds = torch.where(
            torch.rand(2, 24, 32, generator=generator) < 0.7,
            target,
            torch.randint(0, 5, (2, 24, 32), generator=generator),
        )
        target[torch.rand(2, 24, 32, generator=generator) < 0.1] = IGNORE
        out.append((preds, target))
    return out


def _definition(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Per class: pixels predicted and labelled c / pixels predicted or labelled c (ignored pixels out),
    summed over the dataset; mean over the classes with any such pixel."""
    ious = []
    for c in range(CLASSES):
        inter = union = 0
        for preds, target in batches:
            kept = target != IGNORE
            p, t = (preds == c) & kept, (target == c) & kept
            inter += int((p & t).sum())
            union += int((p | t).sum())
        if union:
            ious.append(inter / union)
    return float(np.mean(ious))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_torchmetrics_jaccard_macro_and_the_definition(seed: int) -> None:
    ours = SemanticIoU(CLASSES, ignore_index=IGNORE)
    theirs = MulticlassJaccardIndex(num_classes=CLASSES, average="macro", ignore_index=IGNORE)
    batches = _batches(seed)
    for preds, target in batches:
        ours.update(preds, target)
        theirs.update(preds, target)
    value = float(ours.compute())
    assert value == pytest.approx(float(theirs.compute()), abs=1e-6)
    assert value == pytest.approx(_definition(batches), abs=1e-6)
    assert 0.3 < value < 0.9


def test_counts_over_the_dataset_not_per_image() -> None:
    # image 1: class 0 right on 1 pixel of 1; image 2: class 0 wrong on 3 pixels (predicted 1)
    metric = SemanticIoU(2)
    metric.update(torch.tensor([[[0]]]), torch.tensor([[[0]]]))
    metric.update(torch.tensor([[[1, 1, 1]]]), torch.tensor([[[0, 0, 0]]]))
    # class 0: 1 / 4; class 1: 0 / 3
    assert float(metric.compute()) == pytest.approx((1 / 4 + 0) / 2)


def test_nothing_seen_is_zero_and_reset_clears() -> None:
    metric = SemanticIoU(3, ignore_index=IGNORE)
    assert float(metric.compute()) == 0.0
    metric.update(torch.full((1, 2, 2), 1), torch.full((1, 2, 2), IGNORE))
    assert float(metric.compute()) == 0.0
    metric.update(torch.ones(1, 2, 2, dtype=torch.int64), torch.ones(1, 2, 2, dtype=torch.int64))
    assert float(metric.compute()) == 1.0
    metric.reset()
    assert int(metric.confusion.sum()) == 0


@pytest.mark.parametrize(
    ("preds", "target", "message"),
    [
        (torch.tensor([[3]]), torch.tensor([[0]]), "preds holds labels outside 0 .. 2"),
        (torch.tensor([[0]]), torch.tensor([[-1]]), "target holds labels outside 0 .. 2"),
        (torch.tensor([[0, 1]]), torch.tensor([[0]]), "differ in shape"),
    ],
)
def test_bad_labels_are_refused(preds: torch.Tensor, target: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SemanticIoU(3, ignore_index=IGNORE).update(preds, target)


def test_ignore_index_may_not_be_a_class() -> None:
    with pytest.raises(ValueError, match="ignore_index 2 is a class index"):
        SemanticIoU(3, ignore_index=2)
