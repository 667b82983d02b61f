"""Non-maximum suppression of binary masks: drop a detection that repeats a better one of its class.

A set predictor's proposals are trained to cover each object once (Hungarian matching), but a
short training leaves several proposals on the same object, each confident. Mask AP counts every
repeat as a false positive ranked among the true ones. Mask NMS (as in Mask R-CNN and SOLO, on
masks rather than boxes) keeps, per class, the best-scored of detections whose masks overlap by more
than a threshold IoU. It is not in FIND or Mask2Former, so :class:`SegmentationTask` applies it only
when ``instance_nms`` is set.
"""

from __future__ import annotations

import torch
from torch import Tensor

DEFAULT_CHUNK_PIXELS = 1 << 16
"""Pixels per matrix product of :func:`mask_iou`: 100 masks of 1024 x 1024 never need 400 MB."""


def mask_iou(masks: Tensor, chunk_pixels: int = DEFAULT_CHUNK_PIXELS) -> Tensor:
    """Pairwise IoU of binary masks.

    Args:
        masks: bool[n,h,w].
        chunk_pixels: pixels per chunk of the intersection products (bounds memory at n x chunk).

    Returns:
        float[n,n]; two empty masks have IoU 0.

    """
    flat = masks.flatten(1)
    n, pixels = int(flat.shape[0]), int(flat.shape[1])
    intersection = torch.zeros(n, n, dtype=torch.float32, device=masks.device)
    for start in range(0, pixels, chunk_pixels):
        part = flat[:, start : start + chunk_pixels].float()
        intersection += part @ part.T
    area = intersection.diagonal()
    union = area[:, None] + area[None, :] - intersection
    return intersection / union.clamp(min=1)


def per_class_nms(ious: Tensor, labels: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy per-class NMS from pairwise IoU: indices of the kept detections, by decreasing score.

    Visiting detections from the best score down, one is dropped when its IoU with an already kept
    detection of the same label exceeds ``iou_threshold``. The IoU is the caller's (:func:`mask_iou`
    of binary masks, pycocotools' of RLEs...), so detections sharing a mask need it only once.

    Args:
        ious: float[n,n] pairwise IoU.
        labels: int64[n].
        scores: float[n].
        iou_threshold: in [0, 1]; 1 keeps everything.

    Returns:
        int64[k] indices into the inputs.

    """
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
    order = scores.argsort(descending=True)
    repeats = ious[order][:, order] > iou_threshold
    repeats &= labels[order][:, None] == labels[order][None, :]
    keep = torch.ones(int(order.numel()), dtype=torch.bool, device=scores.device)
    # a loop over at most max_detections rows: each kept row suppresses the later repeats it has
    for i in range(int(order.numel())):
        if keep[i]:
            keep[i + 1 :] &= ~repeats[i, i + 1 :]
    return order[keep]
