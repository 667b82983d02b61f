"""The segmentation task's evaluation helpers."""

from __future__ import annotations

import torch

from findlit.tasks.segmentation_metrics import semantic_target


def test_semantic_target_paints_labels_and_ignores() -> None:
    masks = torch.zeros(2, 4, 6, dtype=torch.bool)
    masks[0, :2, :3] = True
    masks[1, 2:, :3] = True
    ignore = torch.ones(4, 6, dtype=torch.bool)
    ignore[:, :4] = False
    ignore[0, 0] = True
    padding = torch.ones(4, 6, dtype=torch.bool)
    padding[:, :4] = False
    target = semantic_target(
        {"masks": masks, "labels": torch.tensor([3, 1]), "ignore_mask": ignore}, padding, (4, 4)
    )
    expected = torch.tensor([[255, 3, 3, 255], [3, 3, 3, 255], [1, 1, 1, 255], [1, 1, 1, 255]])
    assert torch.equal(target, expected)
