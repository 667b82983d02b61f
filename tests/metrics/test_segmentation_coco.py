"""PQ and mask AP of SegmentationMetrics on the real COCO sample, against independent computations.

Predictions are perturbed ground truth (shifted, eroded, dropped, relabelled segments, false positives,
segments on void and crowd regions, unassigned pixels), so that every rule of the definitions is used.

- mask AP: pycocotools' ``COCOeval`` (segm) on the same detections, ground truth read from the sample's
  detection-format file (with its crowd annotations), thing categories only.
- PQ: :func:`reference_pq` below, panopticapi's ``pq_compute`` rules written over segment-id maps, with
  crowd regions folded into void as findlit's datasets do (``decode_panoptic``'s ``ignore``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchmetrics.detection import PanopticQuality

from findlit.data.decode import decode_panoptic, panoptic_id_map
from findlit.data.formats import read_coco_panoptic
from findlit.data.records import Category, PanopticRecord
from findlit.metrics import (
    instance_target,
    panoptic_prediction_map,
    panoptic_target_map,
    segmentation_metrics,
)

# -- helpers ------------------------------------------------------------------------------------


def _dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """bool[H,W] grown by a (2r+1) square."""
    return F.max_pool2d(mask[None, None].float(), 2 * radius + 1, stride=1, padding=radius)[0, 0] > 0


def _erode(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """bool[H,W] shrunk by a (2r+1) square."""
    return ~_dilate(~mask, radius)


def _shift(mask: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """bool[H,W] moved by (dy, dx), pixels moved out of the frame are lost."""
    out = torch.zeros_like(mask)
    h, w = mask.shape
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = mask[
        max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    return out


def _vocabulary(categories: dict[int, Category]) -> tuple[list[int], list[bool], dict[int, int]]:
    """(category ids, thing flags, category id -> class index), as TaskDataset builds them."""
    ids = sorted(categories)
    return ids, [categories[c].isthing for c in ids], {c: k for k, c in enumerate(ids)}


# -- mask AP ------------------------------------------------------------------------------------


def _perturbed_detections(
    masks: np.ndarray, categories: Sequence[int], crowd: Sequence[bool], things: Sequence[int], seed: int
) -> list[tuple[np.ndarray, int, float]]:
    """(mask bool[H,W], category id, score) detections made from one image's annotations."""
    generator = torch.Generator().manual_seed(seed)
    height, width = masks.shape[1:]
    out: list[tuple[np.ndarray, int, float]] = []

    def score() -> float:
        return float(torch.rand((), generator=generator))

    for k, (mask_np, category, is_crowd) in enumerate(zip(masks, categories, crowd, strict=True)):
        mask = torch.from_numpy(mask_np)
        if is_crowd:  # a detection on a crowd region: COCO ignores it rather than count a false positive
            out.append((mask_np, category, score()))
            continue
        kind = k % 6
        if kind == 0:  # exact, confident
            out.append((mask_np, category, 0.5 + score() / 2))
        elif kind == 1:  # shifted: IoU varies with the object's size
            out.append((_shift(mask, 4, -6).numpy(), category, score()))
        elif kind == 2:  # eroded, plus a duplicate of lower score
            out.append((_erode(mask, 2).numpy(), category, score()))
            out.append((mask_np, category, score() / 4))
        elif kind == 3:  # dropped (a false negative)
            pass
        elif kind == 4:  # dilated, and a copy with a wrong category
            out.append((_dilate(mask, 3).numpy(), category, score()))
            wrong = things[(things.index(category) + 1) % len(things)]
            out.append((mask_np, wrong, score()))
        else:  # a low-confidence exact one
            out.append((mask_np, category, score() / 10))
    for _ in range(4):  # false positives: rectangles of random thing categories
        top, left = (int(torch.randint(0, n // 2, (), generator=generator)) for n in (height, width))
        rectangle = np.zeros((height, width), dtype=bool)
        rectangle[top : top + height // 4, left : left + width // 5] = True
        category = things[int(torch.randint(0, len(things), (), generator=generator))]
        out.append((rectangle, category, score()))
    return out


def test_mask_ap_equals_cocoeval(coco_sample: Path, tmp_path: Path) -> None:
    document = json.loads(
        (coco_sample / "annotations" / "panoptic_detection_format_val2017.json").read_text()
    )
    # the detection-format file lists categories without ``isthing``: the panoptic file has it
    panoptic = json.loads((coco_sample / "annotations" / "panoptic_val2017.json").read_text())
    categories = {c["id"]: Category(c["id"], c["name"], bool(c["isthing"])) for c in panoptic["categories"]}
    assert {c["id"] for c in document["categories"]} == set(categories)
    category_ids, thing_classes, index_of = _vocabulary(categories)
    things = [c for c in category_ids if categories[c].isthing]
    # mask AP is over things (the instance predictions are things only); ids shifted by one because
    # COCOeval takes annotation id 0 for "unmatched"
    document["annotations"] = [a for a in document["annotations"] if categories[a["category_id"]].isthing]
    for annotation in document["annotations"]:
        annotation["id"] += 1
    assert sum(a["iscrowd"] for a in document["annotations"]) >= 1  # the crowd rule is exercised
    gt_path = tmp_path / "things.json"
    gt_path.write_text(json.dumps(document))
    ground_truth = COCO(str(gt_path))

    metrics = segmentation_metrics(
        things=things,
        stuffs=[c for c in category_ids if c not in things],
        num_classes=len(category_ids),
        include=("AP",),
    )
    results: list[dict[str, Any]] = []
    preds, targets = [], []
    for seed, image_id in enumerate(sorted(ground_truth.getImgIds())):
        annotations = ground_truth.loadAnns(ground_truth.getAnnIds(imgIds=[image_id]))
        masks = np.stack([ground_truth.annToMask(a).astype(bool) for a in annotations])
        crowd = [bool(a["iscrowd"]) for a in annotations]
        detections = _perturbed_detections(
            masks, [a["category_id"] for a in annotations], crowd, things, seed
        )
        for mask, category, score in detections:
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            results.append(
                {"image_id": image_id, "category_id": category, "segmentation": rle, "score": score}
            )
        preds.append(
            {
                "masks": torch.from_numpy(np.stack([d[0] for d in detections])),
                "labels": torch.tensor([index_of[d[1]] for d in detections]),
                "scores": torch.tensor([d[2] for d in detections]),
            }
        )
        # the target as the module builds it: every segment with its class index and crowd flag
        targets.append(
            instance_target(
                torch.from_numpy(masks),
                torch.tensor([index_of[a["category_id"]] for a in annotations]),
                thing_classes,
                torch.tensor(crowd),
            )
        )
    metrics.update(instance_preds=preds, instance_targets=targets)  # both images in one update
    ours = metrics.compute()

    evaluation = COCOeval(ground_truth, ground_truth.loadRes(results), iouType="segm")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert 0.2 < evaluation.stats[0] < 0.9  # a perturbation that tests something
    assert ours["AP"].item() == pytest.approx(evaluation.stats[0], abs=1e-4)
    assert ours["AP50"].item() == pytest.approx(evaluation.stats[1], abs=1e-4)
    assert ours["AP75"].item() == pytest.approx(evaluation.stats[2], abs=1e-4)


def test_instance_target_keeps_things_and_crowd_flags() -> None:
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[0, :2], masks[1, 2:], masks[2, :, :1] = True, True, True
    out = instance_target(masks, torch.tensor([0, 1, 2]), [True, False, True], torch.tensor([0, 0, 1]))
    assert out["labels"].tolist() == [0, 2]
    assert torch.equal(out["masks"], masks[[0, 2]])
    assert out["iscrowd"].tolist() == [0, 1]
    empty = instance_target(masks[:0], torch.zeros(0, dtype=torch.long), [True, False, True])
    assert empty["masks"].shape == (0, 4, 4) and "iscrowd" not in empty


# -- PQ -----------------------------------------------------------------------------------------

Segments = dict[int, int]
"""segment id -> category id."""


def _perturbed_panoptic(
    ids: np.ndarray, record: PanopticRecord, categories: dict[int, Category], seed: int
) -> tuple[np.ndarray, Segments]:
    """A predicted segment-id map (0 = unassigned) and its segments, from one ground-truth id map."""
    generator = torch.Generator().manual_seed(seed)
    truth = torch.from_numpy(ids)
    pred = truth.clone()
    segments: Segments = {s.id: s.category_id for s in record.segments}  # crowd ones too: predicted as such
    things = sorted(c for c in categories if categories[c].isthing)
    present_stuff = {s.category_id for s in record.segments if not categories[s.category_id].isthing}
    absent_stuff = sorted(c for c in categories if not categories[c].isthing and c not in present_stuff)
    next_id = int(ids.max()) + 1
    ordered = sorted((s for s in record.segments if not s.iscrowd), key=lambda s: -s.area)
    for k, segment in enumerate(ordered):
        mask = truth == segment.id
        kind = k % 7
        if kind == 1:  # shifted: pixels it leaves are unassigned
            pred[mask & (pred == segment.id)] = 0
            pred[_shift(mask, 3, 4)] = segment.id
        elif kind == 2:  # eroded: IoU above or below 0.5 with the segment's size
            pred[mask & ~_erode(mask, 2)] = 0
        elif kind == 3:  # dropped: wholly unassigned, a false negative as in panopticapi
            pred[mask] = 0
        elif kind == 4:  # relabelled (stuff to a stuff category absent from the image)
            category = segment.category_id
            pool = things if categories[category].isthing else absent_stuff
            segments[segment.id] = (
                pool[(pool.index(category) + 1) % len(pool)] if category in pool else pool[0]
            )
        elif kind == 5:  # a third of it unassigned: the union keeps those pixels
            pred[mask & (torch.rand(mask.shape, generator=generator) < 0.33)] = 0
        elif kind == 6 and categories[segment.category_id].isthing:  # split in two instances
            columns = mask.nonzero()[:, 1]
            half = mask & (torch.arange(mask.shape[1])[None, :] > columns.float().median())
            pred[half] = next_id
            segments[next_id] = segment.category_id
            next_id += 1
    height, width = ids.shape
    for _ in range(3):  # false positives of thing categories
        top, left = (int(torch.randint(0, n - n // 5, (), generator=generator)) for n in (height, width))
        pred[top : top + height // 10, left : left + width // 10] = next_id
        segments[next_id] = things[int(torch.randint(0, len(things), (), generator=generator))]
        next_id += 1
    # a segment on the void pixels: mostly void in the target, so no false positive
    void = truth == 0
    assert bool(void.any())
    pred[void] = next_id
    segments[next_id] = things[0]
    present = set(pred.unique().tolist())
    return pred.numpy(), {i: c for i, c in segments.items() if i in present}


def reference_pq(
    images: Sequence[tuple[np.ndarray, Segments, set[int], np.ndarray, Segments]],
    categories: dict[int, Category],
) -> dict[str, float]:
    """panopticapi's PQ over images ``(gt ids, gt segments, gt crowd ids, pred ids, pred segments)``.

    Ids 0 are void (target) and unassigned (prediction); crowd segments are void too. Per category, a
    predicted and a target segment match when IoU > 0.5, where the union leaves out the predicted
    pixels on void; unmatched targets are false negatives; an unmatched prediction is a false positive
    unless more than half of it is void in the target.
    """
    stats = {c: [0.0, 0, 0, 0] for c in categories}  # iou sum, tp, fp, fn
    for gt_ids, gt_segments, crowd, pred_ids, pred_segments in images:
        void = (gt_ids == 0) | np.isin(gt_ids, list(crowd))
        gt_masks = {i: gt_ids == i for i in gt_segments if i not in crowd}
        pred_masks = {i: pred_ids == i for i in pred_segments}
        matched_gt, matched_pred = set(), set()
        for g, gt_mask in gt_masks.items():
            for p, pred_mask in pred_masks.items():
                if gt_segments[g] != pred_segments[p]:
                    continue
                intersection = int((gt_mask & pred_mask).sum())
                if intersection == 0:
                    continue
                union = int(gt_mask.sum() + pred_mask.sum()) - intersection - int((pred_mask & void).sum())
                if intersection / union > 0.5:
                    matched_gt.add(g)
                    matched_pred.add(p)
                    stats[gt_segments[g]][0] += intersection / union
                    stats[gt_segments[g]][1] += 1
        for g in set(gt_masks) - matched_gt:
            stats[gt_segments[g]][3] += 1
        for p in set(pred_masks) - matched_pred:
            if (pred_masks[p] & void).sum() / pred_masks[p].sum() <= 0.5:
                stats[pred_segments[p]][2] += 1
    pq, sq, rq, is_thing = [], [], [], []
    for category, (iou_sum, tp, fp, fn) in stats.items():
        if tp + fp + fn == 0:
            continue
        sq.append(iou_sum / tp if tp else 0.0)
        rq.append(tp / (tp + fp / 2 + fn / 2))
        pq.append(sq[-1] * rq[-1])
        is_thing.append(categories[category].isthing)
    flags = np.array(is_thing)
    return {
        "PQ": float(np.mean(pq)),
        "SQ": float(np.mean(sq)),
        "RQ": float(np.mean(rq)),
        "PQ_th": float(np.mean(np.array(pq)[flags])),
        "PQ_st": float(np.mean(np.array(pq)[~flags])),
    }


def _panoptic_inputs(coco_sample: Path) -> tuple[dict[int, Category], list[Any], list[Any]]:
    """Categories; per image the reference's tuple and the (prediction, target) maps of the metric."""
    data = read_coco_panoptic(
        coco_sample / "annotations" / "panoptic_val2017.json",
        coco_sample / "panoptic_val2017",
        coco_sample / "val2017",
    )
    categories = data.categories
    category_ids, _, index_of = _vocabulary(categories)
    reference, maps = [], []
    for seed, record in enumerate(data.records):
        gt_ids = panoptic_id_map(record)
        pred_ids, pred_segments = _perturbed_panoptic(gt_ids, record, categories, seed)
        gt_segments = {s.id: s.category_id for s in record.segments}
        crowd = {s.id for s in record.segments if s.iscrowd}
        reference.append((gt_ids, gt_segments, crowd, pred_ids, pred_segments))
        # the metric's inputs as the module builds them: class indices mapped back to category ids
        decoded = decode_panoptic(record)
        labels = torch.tensor([index_of[c] for c in decoded.category_ids.tolist()])
        target = panoptic_target_map(decoded.masks, labels, category_ids, decoded.ignore)
        segments = [{"id": i, "category": index_of[c]} for i, c in pred_segments.items()]
        pred = panoptic_prediction_map(torch.from_numpy(pred_ids), segments, category_ids)
        maps.append((pred, target))
    return categories, reference, maps


def test_pq_equals_reference_on_perturbed_coco(coco_sample: Path) -> None:
    categories, reference, maps = _panoptic_inputs(coco_sample)
    assert any(crowd for _, _, crowd, _, _ in reference)  # the crowd rule is exercised
    expected = reference_pq(reference, categories)
    assert 0.1 < expected["PQ"] < 0.9 and expected["PQ_th"] > 0 and expected["PQ_st"] > 0

    things = [c for c in categories if categories[c].isthing]
    stuffs = [c for c in categories if not categories[c].isthing]
    metrics = segmentation_metrics(things, stuffs, num_classes=len(categories), include=("PQ",))
    for pred, target in maps:  # the two images differ in size: one update each
        metrics.update(panoptic_pred=pred[None], panoptic_target=target[None])
    got = metrics.compute()
    for key, value in expected.items():
        assert got[key].item() == pytest.approx(value, abs=1e-6), key

    # torchmetrics' own handling of unassigned predicted pixels (as void) differs from panopticapi's
    plain = PanopticQuality(things=set(things), stuffs=set(stuffs), allow_unknown_preds_category=True)
    for pred, target in maps:
        plain.update(pred[None], target[None])
    assert abs(plain.compute().item() - expected["PQ"]) > 1e-3


def test_pq_batch_of_equal_sizes_matches_single_updates(coco_sample: Path) -> None:
    categories, _, maps = _panoptic_inputs(coco_sample)
    things = [c for c in categories if categories[c].isthing]
    stuffs = [c for c in categories if not categories[c].isthing]
    height = min(pred.shape[0] for pred, _ in maps)
    single = segmentation_metrics(things, stuffs, num_classes=len(categories), include=("PQ",))
    batched = segmentation_metrics(things, stuffs, num_classes=len(categories), include=("PQ",))
    for pred, target in maps:
        single.update(panoptic_pred=pred[None, :height], panoptic_target=target[None, :height])
    batched.update(
        panoptic_pred=torch.stack([pred[:height] for pred, _ in maps]),
        panoptic_target=torch.stack([target[:height] for _, target in maps]),
    )
    a, b = single.compute(), batched.compute()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].item() == pytest.approx(b[key].item()), key


def test_panoptic_maps_void_and_ids() -> None:
    segment_ids = torch.tensor([[0, 3], [5, 3]])
    segments = [{"id": 3, "category": 1}, {"id": 5, "category": 0}]
    pred = panoptic_prediction_map(segment_ids, segments, [10, 20])
    assert pred[..., 0].tolist() == [[-1, 20], [10, 20]]
    assert pred[..., 1].tolist() == [[0, 3], [5, 3]]
    masks = torch.zeros(2, 2, 2, dtype=torch.bool)
    masks[0, 0], masks[1, 1] = True, True
    ignore = torch.tensor([[False, True], [False, False]])
    target = panoptic_target_map(masks, torch.tensor([1, 0]), [10, 20], ignore, torch.tensor([0, 1]))
    # segment 1 is crowd: its category, a negative instance id; the ignored pixel is void
    assert target[..., 0].tolist() == [[20, -1], [10, 10]]
    assert target[..., 1].tolist() == [[1, 0], [-2, -2]]
