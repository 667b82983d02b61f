"""Mask IoU against pycocotools, and greedy per-class mask NMS on hand-built cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as coco_mask

from findlit.tasks.mask_nms import mask_iou, per_class_nms
from findlit.tasks.segmentation import SegmentationTask, instance_inference


def box(top: int, left: int, bottom: int, right: int, size: int = 10) -> torch.Tensor:
    """bool[size,size] with the rectangle [top, bottom) x [left, right) set."""
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[top:bottom, left:right] = True
    return mask


def test_mask_iou_equals_pycocotools_and_does_not_depend_on_chunks() -> None:
    generator = torch.Generator().manual_seed(0)
    masks = torch.rand(6, 17, 13, generator=generator) > 0.6
    masks[5] = False  # an empty mask: IoU 0 with everything, itself included
    rles = coco_mask.encode(np.asfortranarray(masks.permute(1, 2, 0).numpy().astype(np.uint8)))
    expected = coco_mask.iou(rles, rles, [0] * len(rles))
    np.testing.assert_allclose(mask_iou(masks).numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(mask_iou(masks, chunk_pixels=7).numpy(), expected, atol=1e-6)


def test_nms_drops_repeats_of_a_kept_detection_of_the_same_class_only() -> None:
    a = box(0, 0, 5, 5)  # 25 px
    b = box(0, 0, 5, 4)  # inside a: IoU 20/25 = 0.8
    c = box(0, 0, 5, 5)  # a's mask, another class
    d = box(0, 0, 5, 3)  # IoU 0.75 with b (dropped), 0.6 with a (kept)
    masks = torch.stack([d, b, c, a])
    labels = torch.tensor([1, 1, 2, 1])
    scores = torch.tensor([0.6, 0.8, 0.7, 0.9])
    ious = mask_iou(masks)
    kept = per_class_nms(ious, labels, scores, iou_threshold=0.7)
    # by score: a (kept), b (repeats a: dropped), c (other class: kept), d (only b, dropped, is
    # above the threshold: kept, as greedy NMS compares with kept detections only)
    assert kept.tolist() == [3, 2, 0]
    assert per_class_nms(ious, labels, scores, iou_threshold=0.5).tolist() == [3, 2]
    assert per_class_nms(ious, labels, scores, iou_threshold=1.0).tolist() == [3, 1, 2, 0]


def test_nms_rejects_a_threshold_outside_0_1() -> None:
    masks = box(0, 0, 2, 2)[None]
    with pytest.raises(ValueError, match="iou_threshold"):
        per_class_nms(mask_iou(masks), torch.tensor([0]), torch.tensor([1.0]), iou_threshold=1.5)


def test_instance_inference_with_nms_keeps_one_of_two_proposals_on_one_object() -> None:
    # two proposals on the same object (class 0), a third on another object (class 0)
    logits = torch.full((3, 10, 10), -5.0)
    logits[0][box(0, 0, 5, 5)] = 5.0
    logits[1][box(0, 0, 5, 5)] = 4.0
    logits[2][box(6, 6, 9, 9)] = 5.0
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.7, 0.2, 0.1]])
    plain = instance_inference(probs, logits, [True, True], max_detections=3)
    assert plain["labels"].tolist() == [0, 0, 0]
    deduplicated = instance_inference(probs, logits, [True, True], max_detections=3, nms_threshold=0.5)
    assert deduplicated["labels"].tolist() == [0, 0]
    assert torch.equal(deduplicated["masks"][0], box(0, 0, 5, 5))
    assert torch.equal(deduplicated["masks"][1], box(6, 6, 9, 9))
    assert deduplicated["scores"][0] == plain["scores"][0]


def test_segmentation_task_rejects_an_instance_nms_outside_0_1() -> None:
    with pytest.raises(ValueError, match="instance_nms"):
        SegmentationTask(instance_nms=-0.1)
    assert SegmentationTask(instance_nms=0.5).instance_nms == 0.5
    assert SegmentationTask().instance_nms is None


def test_instance_nms_on_per_query_ious_equals_nms_on_every_detection_s_own_mask() -> None:
    # 4 queries x 2 thing classes = 8 detections, each query's mask shared by its two detections
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 12, 12, generator=generator)
    logits[1] = logits[0] + 0.1  # a near repeat of query 0
    probs = torch.rand(4, 3, generator=generator).softmax(-1)
    plain = instance_inference(probs, logits, [True, True], max_detections=8)
    kept = per_class_nms(mask_iou(plain["masks"]), plain["labels"], plain["scores"], 0.5)
    deduplicated = instance_inference(probs, logits, [True, True], max_detections=8, nms_threshold=0.5)
    assert 0 < len(kept) < 8
    assert torch.equal(deduplicated["masks"], plain["masks"][kept])
    assert torch.equal(deduplicated["labels"], plain["labels"][kept])
    assert torch.equal(deduplicated["scores"], plain["scores"][kept])
