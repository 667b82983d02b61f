"""What limits mask AP: classification, repeated detections, or the masks themselves.

Reads the COCO instance results that ``findlit test`` writes (``predictions/<dataset>/
instances_results.json`` in the run folder) and the ground-truth instances file, keeps the thing
categories (ids below ``--max-thing-id`` or those named with ``--things``; default: every category
whose ground truth is not a panoptic "stuff"), and prints, with pycocotools' COCOeval:

- mask AP as predicted;
- with oracle labels: each detection relabelled with the class of the ground-truth thing its mask
  overlaps most (if AP barely moves, classification is not what limits it);
- the highest-scored detections split into true positives, repeats of an already detected thing
  (mask IoU >= 0.5 with it) and background;
- AP after greedy per-class mask NMS at a few IoU thresholds (what ``instance_nms`` does);
- each thing's best mask IoU over all detections (the masks' own quality).

Example (the demo's run folder)::

    .venv/bin/python scripts/diagnose/instance_errors.py \\
        logs/demo/lightning_logs/version_0/predictions/demo_panoptic/instances_results.json \\
        data/demo/annotations/instances_val.json --max-thing-id 100
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from findlit.tasks.mask_nms import per_class_nms as findlit_nms

Detection = dict[str, Any]


def load_ground_truth(path: Path, max_thing_id: int | None) -> COCO:
    """The instances file restricted to thing categories (all, without ``max_thing_id``)."""
    data = json.loads(path.read_text())
    if max_thing_id is not None:
        things = {c["id"] for c in data["categories"] if c["id"] < max_thing_id}
        data["annotations"] = [a for a in data["annotations"] if a["category_id"] in things]
        data["categories"] = [c for c in data["categories"] if c["id"] in things]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = data
        coco.createIndex()
    return coco


def mask_ap(ground_truth: COCO, detections: list[Detection]) -> list[float]:
    """COCOeval's segm summary (AP, AP50, AP75, ...) of ``detections``; zeros when there are none."""
    if not detections:
        return [0.0] * 12
    with contextlib.redirect_stdout(io.StringIO()):
        results = ground_truth.loadRes(copy.deepcopy(detections))
        evaluation = COCOeval(ground_truth, results, "segm")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return [float(value) for value in evaluation.stats]


def best_overlaps(ground_truth: COCO, detection: Detection) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Mask IoU of a detection with every ground-truth thing of its image, and those things."""
    things = ground_truth.imgToAnns.get(detection["image_id"], [])
    if not things:
        return np.zeros(0), []
    rles = [ground_truth.annToRLE(thing) for thing in things]
    return coco_mask.iou([detection["segmentation"]], rles, [0] * len(rles))[0], things


def oracle_labels(ground_truth: COCO, detections: list[Detection]) -> list[Detection]:
    """Each detection relabelled with the category of the thing it overlaps most."""
    relabelled = []
    for detection in detections:
        overlaps, things = best_overlaps(ground_truth, detection)
        if len(things):
            relabelled.append({**detection, "category_id": things[int(np.argmax(overlaps))]["category_id"]})
    return relabelled


def outcome_counts(ground_truth: COCO, detections: list[Detection], top: int) -> Counter[str]:
    """Of the ``top`` highest-scored detections: true positives, repeats and background (IoU 0.5)."""
    kinds: list[tuple[float, str]] = []
    by_image: dict[int, list[Detection]] = {}
    for detection in detections:
        by_image.setdefault(detection["image_id"], []).append(detection)
    for image_detections in by_image.values():
        found: set[int] = set()
        for detection in sorted(image_detections, key=lambda d: -d["score"]):
            overlaps, _ = best_overlaps(ground_truth, detection)
            best = int(np.argmax(overlaps)) if len(overlaps) else -1
            if best < 0 or overlaps[best] < 0.5:
                kind = "background"
            elif best in found:
                kind = "repeat"
            else:
                kind = "true positive"
                found.add(best)
            kinds.append((detection["score"], kind))
    kinds.sort(key=lambda item: -item[0])
    return Counter(kind for _, kind in kinds[:top])


def per_class_nms(detections: list[Detection], iou_threshold: float) -> list[Detection]:
    """Per image, the detections ``instance_nms`` keeps (findlit's NMS on pycocotools' mask IoU)."""
    kept_all: list[Detection] = []
    by_image: dict[int, list[Detection]] = {}
    for detection in detections:
        by_image.setdefault(detection["image_id"], []).append(detection)
    for image_detections in by_image.values():
        rles = [detection["segmentation"] for detection in image_detections]
        ious = torch.as_tensor(coco_mask.iou(rles, rles, [0] * len(rles)))
        labels = torch.tensor([detection["category_id"] for detection in image_detections])
        scores = torch.tensor([detection["score"] for detection in image_detections])
        kept = findlit_nms(ious, labels, scores, iou_threshold)
        kept_all += [image_detections[index] for index in kept.tolist()]
    return kept_all


def thing_best_ious(ground_truth: COCO, detections: list[Detection]) -> np.ndarray:
    """float[T]: each ground-truth thing's best mask IoU over the detections of its image."""
    by_image: dict[int, list[dict[str, Any]]] = {}
    for detection in detections:
        by_image.setdefault(detection["image_id"], []).append(detection["segmentation"])
    best = []
    for image_id, things in ground_truth.imgToAnns.items():
        masks = by_image.get(image_id, [])
        for thing in things:
            rle = ground_truth.annToRLE(thing)
            best.append(float(coco_mask.iou(masks, [rle], [0]).max()) if masks else 0.0)
    return np.array(best)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="COCO instance results JSON (findlit test's)")
    parser.add_argument("instances", type=Path, help="ground-truth COCO instances JSON")
    parser.add_argument("--max-thing-id", type=int, default=None, help="thing categories: ids below this")
    parser.add_argument("--nms", type=float, nargs="*", default=[0.5, 0.7], help="NMS IoU thresholds")
    args = parser.parse_args()
    ground_truth = load_ground_truth(args.instances, args.max_thing_id)
    categories = set(ground_truth.getCatIds())
    detections = [d for d in json.loads(args.results.read_text()) if d["category_id"] in categories]

    def report(label: str, stats: list[float], count: int) -> None:
        print(f"{label:32s} {count:6d} detections  AP {100 * stats[0]:5.1f}  AP50 {100 * stats[1]:5.1f}")

    report("as predicted", mask_ap(ground_truth, detections), len(detections))
    oracle = oracle_labels(ground_truth, detections)
    report("oracle labels", mask_ap(ground_truth, oracle), len(oracle))
    things = len(ground_truth.getAnnIds())
    for top in (things // 2, things):
        counts = outcome_counts(ground_truth, detections, top)
        print(
            f"top {top} by score: "
            + ", ".join(f"{kind} {counts[kind]}" for kind in ("true positive", "repeat", "background"))
        )
    for threshold in args.nms:
        kept = per_class_nms(detections, threshold)
        report(f"per-class mask NMS at {threshold}", mask_ap(ground_truth, kept), len(kept))
    best = thing_best_ious(ground_truth, detections)
    print(
        f"{things} things, best mask IoU: median {np.median(best):.2f}, "
        f">= 0.5 {np.mean(best >= 0.5):.2f}, >= 0.75 {np.mean(best >= 0.75):.2f}"
    )


if __name__ == "__main__":
    main()
