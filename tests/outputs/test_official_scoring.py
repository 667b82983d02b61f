"""metrics.json equals the official scoring of the files ``findlit test`` writes.

``findlit test`` runs through the real CLI on generated 64 x 64 images that the test transform
resizes to 48 x 48, so every prediction is made at 48 and scored (and written) at 64. The model's
segmentation and grounding predictions are replaced by perturbed ground truth (shifted masks,
dropped segments, wrong classes, spread scores) so that the scores are far from 0 and 1 and any
difference between scoring at the input size and at the size on disk shows. The written files are
then scored here, apart from findlit's metrics:

- panoptic PQ/SQ/RQ (all, things, stuff) by :func:`coco_panoptic_quality`, written in this file from
  the COCO panoptic definition (panopticapi's ``pq_compute`` rules: IoU > 0.5 with void pixels taken
  out of the union, unmatched predictions mostly on void not counted);
- mask AP/AP50/AP75 by pycocotools' ``COCOeval`` on the instances results file;
- grounding cIoU and mIoU by decoding each written RLE against its referred annotation.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from pycocotools.coco import COCO

from findlit.cli.train import FindLightningCLI
from findlit.data.collate import image_origin
from findlit.tasks.grounding import GroundingTask
from findlit.tasks.segmentation import SegmentationTask
from tests.cli.test_train import tiny_config
from tests.outputs.test_test_results import _decode, _test_datasets, things_cocoeval

TOLERANCE = 1e-6
"""Both sides count the same pixels; only float summation order may differ."""


# -- an independent panoptic quality, from the COCO definition ------------------------------------------


def _segment_ids(png: Path) -> np.ndarray:
    """int64[H,W] segment ids of a COCO panoptic PNG (id = R + 256 G + 256^2 B)."""
    rgb = np.asarray(Image.open(png).convert("RGB"), dtype=np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def _panoptic_entries(json_path: Path, image_ids: set[int]) -> dict[int, dict[str, Any]]:
    document = json.loads(json_path.read_text())
    return {a["image_id"]: a for a in document["annotations"] if a["image_id"] in image_ids}


def coco_panoptic_quality(
    truth_json: Path, truth_folder: Path, pred_json: Path, pred_folder: Path
) -> dict[str, float]:
    """PQ, SQ, RQ and PQ_th, PQ_st of the predicted images (fractions, as metrics.json has them)."""
    truth_document = json.loads(truth_json.read_text())
    is_thing = {c["id"]: bool(c["isthing"]) for c in truth_document["categories"]}
    predicted = _panoptic_entries(pred_json, {a["image_id"] for a in truth_document["annotations"]})
    truth = _panoptic_entries(truth_json, set(predicted))
    tp = dict.fromkeys(is_thing, 0)
    fp, fn, iou_sum = dict(tp), dict(tp), dict.fromkeys(is_thing, 0.0)
    for image_id, pred_entry in predicted.items():
        truth_entry = truth[image_id]
        truth_ids = _segment_ids(truth_folder / truth_entry["file_name"])
        pred_ids = _segment_ids(pred_folder / pred_entry["file_name"])
        truth_segments = {s["id"]: s for s in truth_entry["segments_info"]}
        pred_segments = {s["id"]: s for s in pred_entry["segments_info"]}
        area_t = {i: int((truth_ids == i).sum()) for i in truth_segments}
        area_p = {i: int((pred_ids == i).sum()) for i in pred_segments}
        void = truth_ids == 0
        crowd = {s["category_id"]: truth_ids == s["id"] for s in truth_segments.values() if s["iscrowd"]}
        matched_t: set[int] = set()
        matched_p: set[int] = set()
        for t, truth_segment in truth_segments.items():
            if truth_segment["iscrowd"]:
                continue
            for p, pred_segment in pred_segments.items():
                if pred_segment["category_id"] != truth_segment["category_id"]:
                    continue
                pred_mask = pred_ids == p
                overlap = int((pred_mask & (truth_ids == t)).sum())
                union = area_t[t] + area_p[p] - overlap - int((pred_mask & void).sum())
                iou = overlap / union if union else 0.0
                if iou > 0.5:
                    category = truth_segment["category_id"]
                    tp[category] += 1
                    iou_sum[category] += iou
                    matched_t.add(t)
                    matched_p.add(p)
        for t, truth_segment in truth_segments.items():
            if not truth_segment["iscrowd"] and t not in matched_t:
                fn[truth_segment["category_id"]] += 1
        for p, pred_segment in pred_segments.items():
            if p in matched_p or area_p[p] == 0:
                continue
            pred_mask = pred_ids == p
            ignored = pred_mask & void
            if pred_segment["category_id"] in crowd:
                ignored |= pred_mask & crowd[pred_segment["category_id"]]
            if ignored.sum() / area_p[p] > 0.5:
                continue
            fp[pred_segment["category_id"]] += 1

    def average(categories: list[int]) -> tuple[float, float, float]:
        counted = [c for c in categories if tp[c] + fp[c] + fn[c] > 0]
        pq = [iou_sum[c] / (tp[c] + 0.5 * fp[c] + 0.5 * fn[c]) for c in counted]
        sq = [iou_sum[c] / tp[c] if tp[c] else 0.0 for c in counted]
        rq = [tp[c] / (tp[c] + 0.5 * fp[c] + 0.5 * fn[c]) for c in counted]
        return float(np.mean(pq)), float(np.mean(sq)), float(np.mean(rq))

    pq, sq, rq = average(list(is_thing))
    things = average([c for c in is_thing if is_thing[c]])
    stuff = average([c for c in is_thing if not is_thing[c]])
    return {"PQ": pq, "SQ": sq, "RQ": rq, "PQ_th": things[0], "PQ_st": stuff[0]}


# -- predictions made from the ground truth, perturbed -----------------------------------------------


def _shifted(mask: torch.Tensor, k: int) -> torch.Tensor:
    """mask moved by (k mod 3) - 1 pixels along x and (k mod 2) along y, no wrap-around."""
    dx, dy = k % 3 - 1, k % 2
    out = torch.zeros_like(mask)
    h, w = mask.shape
    out[dy:, max(dx, 0) : w + min(dx, 0)] = mask[: h - dy, max(-dx, 0) : w - max(dx, 0)]
    return out


def _perturbed_segmentation(
    self: SegmentationTask, output: Any, batch: dict[str, Any], context: Any
) -> list[dict[str, Any]]:
    """The batch's ground truth at each image's input size, perturbed per segment k of image i:
    shifted by a pixel, dropped when (k + i) % 4 == 0, relabelled when k % 5 == 2, scored 0.3..0.93.
    """
    thing_classes = self.vocabulary(batch, context).thing_classes
    results = []
    for b, (h, w) in enumerate(batch["image_sizes"]):
        target, image_id = batch["targets"][b], int(batch["image_ids"][b])
        top, left = image_origin(batch["padding_mask"][b])
        masks, labels, scores = [], [], []
        for k, (mask, label) in enumerate(zip(target["masks"], target["labels"].tolist(), strict=True)):
            if (k + image_id) % 4 == 0:
                continue
            masks.append(_shifted(mask[top : top + h, left : left + w], k))
            labels.append((label + 1) % len(thing_classes) if k % 5 == 2 else label)
            scores.append(0.3 + 0.07 * ((7 * k + image_id) % 10))
        ids = torch.zeros(h, w, dtype=torch.int64)
        semantic = torch.zeros(h, w, dtype=torch.int64)
        for k, (mask, label) in enumerate(zip(masks, labels, strict=True)):
            ids[mask] = k + 1
            semantic[mask] = label
        kept = [k for k in range(len(masks)) if (ids == k + 1).any()]
        segments = [
            {"id": k + 1, "category": labels[k], "isthing": thing_classes[labels[k]], "score": scores[k]}
            for k in kept
        ]
        things = [k for k in range(len(masks)) if thing_classes[labels[k]]]
        instance = {
            "masks": torch.stack([masks[k] for k in things])
            if things
            else torch.zeros(0, h, w, dtype=torch.bool),
            "labels": torch.tensor([labels[k] for k in things], dtype=torch.int64),
            "scores": torch.tensor([scores[k] for k in things]),
        }
        results.append({"panoptic": (ids, segments), "instance": instance, "semantic": semantic})
    return results


def _perturbed_grounding(
    self: GroundingTask, output: Any, batch: dict[str, Any], context: Any
) -> list[dict[str, Any]]:
    """Each sentence's referred mask at the input size, shifted by a pixel for every other sentence."""
    results = []
    for b, (h, w) in enumerate(batch["image_sizes"]):
        target = batch["targets"][b]
        top, left = image_origin(batch["padding_mask"][b])
        referred = target["masks"][target["sentence_targets"]][:, top : top + h, left : left + w]
        masks = torch.stack([_shifted(mask, s) for s, mask in enumerate(referred)])
        scores = torch.linspace(0.5, 1.0, len(masks))
        results.append({"masks": masks, "scores": scores, "sentences": list(target["sentences"])})
    return results


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``findlit test`` on the 4 validation images with the perturbed ground truth as predictions."""
    root = tmp_path_factory.mktemp("official")
    patches = pytest.MonkeyPatch()
    patches.setattr(sys, "argv", ["findlit"])  # LightningCLI warns when given args and argv
    patches.setattr(SegmentationTask, "predict", _perturbed_segmentation)
    patches.setattr(GroundingTask, "predict", _perturbed_grounding)
    try:
        path = tiny_config(root)
        config = yaml.safe_load(path.read_text())
        config["data"]["test"] = _test_datasets(config["data"]["val"])
        config["trainer"]["limit_test_batches"] = None  # all 4 images
        path.write_text(yaml.safe_dump(config))
        FindLightningCLI(args=["test", "--config", str(path)])
    finally:
        patches.undo()
    run = root / "logs" / "lightning_logs" / "version_0"
    metrics = json.loads((run / "metrics.json").read_text())
    return {"data": root / "data", "predictions": run / "predictions", "metrics": metrics}


@pytest.mark.slow
def test_panoptic_quality_equals_the_coco_definition_on_the_written_files(scored_run: dict[str, Any]) -> None:
    data, folder = scored_run["data"], scored_run["predictions"] / "demo_panoptic"
    official = coco_panoptic_quality(
        data / "annotations" / "panoptic_val.json",
        data / "panoptic_val",
        folder / "panoptic_predictions.json",
        folder / "panoptic",
    )
    assert len(json.loads((folder / "panoptic_predictions.json").read_text())["annotations"]) == 4
    assert 0.2 < official["PQ"] < 0.95  # the perturbations leave it far from both ends
    for name, value in official.items():
        assert scored_run["metrics"][f"test/demo_panoptic/{name}"] == pytest.approx(value, abs=TOLERANCE), (
            name
        )


@pytest.mark.slow
def test_mask_ap_equals_cocoeval_on_the_written_instances(scored_run: dict[str, Any]) -> None:
    data, folder = scored_run["data"], scored_run["predictions"] / "demo_panoptic"
    truth = COCO(str(data / "annotations" / "instances_val.json"))
    results = truth.loadRes(str(folder / "instances_results.json"))
    evaluation = things_cocoeval(data, truth, results, sorted(truth.getImgIds()))
    assert 0.1 < evaluation.stats[0] < 0.95
    for name, value in zip(("AP", "AP50", "AP75"), evaluation.stats[:3], strict=True):
        assert scored_run["metrics"][f"test/demo_panoptic/{name}"] == pytest.approx(value, abs=TOLERANCE), (
            name
        )


@pytest.mark.slow
def test_grounding_ciou_equals_the_written_masks_against_the_referred_objects(
    scored_run: dict[str, Any],
) -> None:
    data = scored_run["data"]
    entries = json.loads((scored_run["predictions"] / "demo_refs" / "grounding_results.json").read_text())
    refs = {ref["ref_id"]: ref for ref in json.loads((data / "annotations" / "refs_val.json").read_text())}
    instances = COCO(str(data / "annotations" / "instances_val.json"))
    intersections, unions, ious = [], [], []
    for entry in entries:
        predicted = _decode(entry["segmentation"])
        truth = instances.annToMask(instances.anns[refs[entry["ref_id"]]["ann_id"]]).astype(bool)
        intersections.append(int((predicted & truth).sum()))
        unions.append(int((predicted | truth).sum()))
        ious.append(intersections[-1] / max(unions[-1], 1))
    assert len({e["image_id"] for e in entries}) == 4
    ciou = sum(intersections) / sum(unions)
    assert 0.2 < ciou < 0.99
    assert scored_run["metrics"]["test/demo_refs/cIoU"] == pytest.approx(ciou, abs=TOLERANCE)
    assert scored_run["metrics"]["test/demo_refs/mIoU"] == pytest.approx(float(np.mean(ious)), abs=TOLERANCE)
