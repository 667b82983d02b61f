"""Per-image inputs of :class:`~findlit.metrics.collections.SegmentationMetrics` from predictions and targets.

Panoptic maps are ``int64[h, w, 2]`` of (category id, instance id) per pixel, in the dataset's category
ids (``Vocabulary.category_ids``) for predictions and targets alike: class index ``k`` of a label or a
predicted segment becomes ``category_ids[k]``. Pixels of no segment get :data:`VOID_CATEGORY`:

- in a target that is void (unlabelled, ``ignore_mask``): a predicted segment lying mostly on it is no
  false positive, and it leaves the IoU of the segments that touch it;
- in a prediction it is "unassigned" (segment id 0 of ``panoptic_inference``), which, as in
  panopticapi, still counts in the area of the target segments it covers.

A crowd segment of a target keeps its category and gets a negative instance id, ``-(k + 1)``: as in
panopticapi, it never matches, and a prediction of its category lying mostly on it and on void is no
false positive.

Instance targets for mask AP keep the thing segments only (the instance predictions are things only).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

VOID_CATEGORY = -1
"""Category id of pixels that belong to no segment, in predicted and target panoptic maps."""


def panoptic_prediction_map(
    segment_ids: Tensor, segments: Sequence[Mapping[str, Any]], category_ids: Sequence[int]
) -> Tensor:
    """int64[h,w,2] panoptic map of one prediction.

    Args:
        segment_ids: int64[h,w], 0 = void, else the ``id`` of one of ``segments``.
        segments: ``{"id", "category" (class index)}`` each.
        category_ids: class index -> category id.

    Returns:
        (category id, segment id) per pixel; void and unlisted ids are ``(VOID_CATEGORY, 0)``.

    """
    size = 1 + max([int(segment_ids.max()) if segment_ids.numel() else 0, *(int(s["id"]) for s in segments)])
    category = torch.full((size,), VOID_CATEGORY, dtype=torch.int64, device=segment_ids.device)
    instance = torch.zeros(size, dtype=torch.int64, device=segment_ids.device)
    for segment in segments:
        if int(segment["id"]) > 0:  # id 0 is void whatever a segment list says
            category[int(segment["id"])] = int(category_ids[int(segment["category"])])
            instance[int(segment["id"])] = int(segment["id"])
    ids = segment_ids.long()
    return torch.stack([category[ids], instance[ids]], dim=-1)


def panoptic_target_map(
    masks: Tensor,
    labels: Tensor,
    category_ids: Sequence[int],
    ignore_mask: Tensor | None = None,
    iscrowd: Tensor | None = None,
) -> Tensor:
    """int64[h,w,2] panoptic map of one target.

    Args:
        masks: bool[M,h,w] segments (non-overlapping in a panoptic target; else the later one wins).
        labels: int64[M] class indices.
        category_ids: class index -> category id.
        ignore_mask: bool[h,w] pixels to leave out (void).
        iscrowd: [M] nonzero for crowd regions (panopticapi neither matches them nor counts them
            as false negatives).

    Returns:
        (category id, segment index + 1) per pixel, ``-(segment index + 1)`` for a crowd segment;
        pixels of no segment or ignored are ``(VOID_CATEGORY, 0)``.

    """
    height, width = int(masks.shape[-2]), int(masks.shape[-1])
    out = torch.zeros(height, width, 2, dtype=torch.int64, device=masks.device)
    out[..., 0] = VOID_CATEGORY
    crowd = [False] * masks.shape[0] if iscrowd is None else [bool(c) for c in iscrowd.tolist()]
    for k, (mask, label) in enumerate(zip(masks, labels.tolist(), strict=True)):
        instance = -(k + 1) if crowd[k] else k + 1
        out[mask] = torch.tensor([int(category_ids[int(label)]), instance], device=out.device)
    if ignore_mask is not None:
        out[ignore_mask.to(masks.device).bool()] = torch.tensor([VOID_CATEGORY, 0], device=out.device)
    return out


def instance_target(
    masks: Tensor, labels: Tensor, thing_classes: Sequence[bool], iscrowd: Tensor | None = None
) -> dict[str, Tensor]:
    """``{"masks": bool[T,h,w], "labels": int64[T] (+ "iscrowd": int64[T])}``: the thing segments only.

    Args:
        masks: bool[M,h,w] segments of one image.
        labels: int64[M] class indices.
        thing_classes: per class index, whether it is a thing.
        iscrowd: [M] nonzero for crowd regions (``MeanAveragePrecision`` ignores detections on them).

    """
    things = torch.tensor(thing_classes, dtype=torch.bool, device=labels.device)
    keep = things[labels.long()] if labels.numel() else torch.zeros(0, dtype=torch.bool, device=labels.device)
    out = {"masks": masks[keep.to(masks.device)].bool(), "labels": labels[keep].long()}
    if iscrowd is not None:
        out["iscrowd"] = iscrowd.to(labels.device)[keep].long()
    return out
