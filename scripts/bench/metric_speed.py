"""Benchmark 6: speed of findlit's PQ and mask AP against independent implementations, same 200 predictions.

    .venv/bin/python scripts/bench/metric_speed.py [--quick] [--images 200] [--size 256] [--panopticapi DIR]

Generated data (seeded): per image a stuff background split in two stuff segments, 6 thing
rectangles and a void strip; the prediction shifts, drops and relabels some segments, adds false
positives and leaves some pixels unassigned. Each implementation gets the same per-image arrays and
does its own conversion, update and compute:

- PQ: ``findlit.metrics.SegmentationMetrics(include=["PQ"])`` (findlit's ``PanopticQuality``
  behind it), one image per update as in evaluation, vs :func:`reference_pq` below
  (panopticapi's ``pq_compute`` rules on segment-id maps with numpy; written for this benchmark);
- PQ from files, when ``--panopticapi DIR`` (a checkout of cocodataset/panopticapi, which is not on
  PyPI; or the environment variable ``FINDLIT_PANOPTICAPI``) is given: the same maps written as
  panoptic PNGs + JSON (untimed), then panopticapi's own single-process ``pq_compute_single_core``
  (it reads the PNGs) vs findlit's ``PanopticQuality`` fed from the same PNGs (read with PIL too);
  the ratio ``pq_findlit_over_panopticapi`` (goal <= 1.0) compares the two from the same files;
- mask AP: ``SegmentationMetrics(include=["AP"])`` (torchmetrics ``MeanAveragePrecision``, segm)
  vs pycocotools' ``COCOeval`` on RLE-encoded masks (encoding included).

The four alternate after a warm-up on 2 images; the values must agree. Ratios: time(findlit) / time(reference)
for PQ and for AP (reported; lower is better).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import alternate, finish, paired_ratios, spread, summary
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from findlit.data.decode import read_panoptic_ids
from findlit.metrics import VOID_CATEGORY, SegmentationMetrics
from findlit.metrics.panoptic_quality import PanopticQuality, PanopticSegments

THINGS = list(range(1, 9))
STUFFS = [10, 11, 12, 13]
OFFSET = 1 << 16


def _rect(generator: np.random.Generator, size: int) -> tuple[int, int, int, int]:
    h, w = generator.integers(size // 10, size // 3, 2)
    y, x = generator.integers(0, size - h), generator.integers(0, size - w)
    return int(y), int(x), int(h), int(w)


def make_data(images: int, size: int, seed: int = 0) -> list[dict[str, Any]]:
    """Per image: target and prediction panoptic maps int64[h,w,2], instance predictions and targets."""
    generator = np.random.default_rng(seed)
    data = []
    for _ in range(images):
        target = np.zeros((size, size, 2), dtype=np.int64)
        pred = np.zeros((size, size, 2), dtype=np.int64)
        pred[..., 0] = VOID_CATEGORY  # unassigned unless painted
        split = int(generator.integers(size // 4, 3 * size // 4))
        stuff = generator.choice(STUFFS, 2, replace=False)
        target[:split, :] = (stuff[0], 1)
        target[split:, :] = (stuff[1], 2)
        shift = int(generator.integers(-8, 9))
        pred[: split + shift, :] = (stuff[0], 1)
        pred[split + shift :, : size - size // 8] = (stuff[1], 2)
        for k in range(6):
            y, x, h, w = _rect(generator, size)
            category = int(generator.choice(THINGS))
            target[y : y + h, x : x + w] = (category, 3 + k)
            if generator.random() < 0.15:  # missed
                continue
            dy, dx = generator.integers(-h // 4, h // 4 + 1), generator.integers(-w // 4, w // 4 + 1)
            y2, x2 = int(np.clip(y + dy, 0, size - h)), int(np.clip(x + dx, 0, size - w))
            label = category if generator.random() > 0.1 else int(generator.choice(THINGS))
            pred[y2 : y2 + h, x2 : x2 + w] = (label, 3 + k)
        y, x, h, w = _rect(generator, size)  # a false positive
        pred[y : y + h, x : x + w] = (int(generator.choice(THINGS)), 20)
        target[:, : size // 16] = (VOID_CATEGORY, 0)  # void strip
        # instances as they are visible in the final maps (later rectangles cover earlier ones)
        pred_ids = [int(i) for i in np.unique(pred[..., 1]) if i >= 3]
        pred_masks = [pred[..., 1] == i for i in pred_ids]
        pred_labels = [int(pred[mask][0, 0]) for mask in pred_masks]
        scores = generator.random(len(pred_ids)).tolist()
        target_ids = [int(i) for i in np.unique(target[..., 1]) if i >= 3]
        inst_masks = [target[..., 1] == i for i in target_ids]
        inst_labels = [int(target[mask][0, 0]) for mask in inst_masks]
        data.append(
            {
                "target": target,
                "pred": pred,
                "pred_masks": np.stack(pred_masks) if pred_masks else np.zeros((0, size, size), bool),
                "pred_labels": np.array(pred_labels, dtype=np.int64),
                "scores": np.array(scores, dtype=np.float32),
                "target_masks": np.stack(inst_masks) if inst_masks else np.zeros((0, size, size), bool),
                "target_labels": np.array(inst_labels, dtype=np.int64),
            }
        )
    return data


# -- PQ ----------------------------------------------------------------------------------------------


def reference_pq(data: list[dict[str, Any]]) -> float:
    """panopticapi's rules: IoU > 0.5 matches of one category; void-overlapping FPs are not counted."""
    categories = [*THINGS, *STUFFS]
    iou_sum = dict.fromkeys(categories, 0.0)
    tp = dict.fromkeys(categories, 0)
    fp = dict.fromkeys(categories, 0)
    fn = dict.fromkeys(categories, 0)
    for item in data:
        target, pred = item["target"], item["pred"]
        # segment ids: target (category, instance) -> id, void -> 0; same for predictions
        gt_id = np.where(target[..., 0] == VOID_CATEGORY, 0, target[..., 0] * 1000 + target[..., 1])
        pred_id = np.where(pred[..., 0] == VOID_CATEGORY, 0, pred[..., 0] * 1000 + pred[..., 1])
        gt_ids, gt_area = np.unique(gt_id, return_counts=True)
        pred_ids, pred_area = np.unique(pred_id, return_counts=True)
        gt_areas, pred_areas = (
            dict(zip(gt_ids.tolist(), gt_area.tolist(), strict=True)),
            dict(zip(pred_ids.tolist(), pred_area.tolist(), strict=True)),
        )
        pairs, counts = np.unique(gt_id.astype(np.int64) * OFFSET + pred_id, return_counts=True)
        intersection = {
            (int(p // OFFSET), int(p % OFFSET)): int(c) for p, c in zip(pairs, counts, strict=True)
        }
        matched_gt, matched_pred = set(), set()
        for (g, p), inter in intersection.items():
            if g == 0 or p == 0 or g // 1000 != p // 1000:
                continue
            union = pred_areas[p] + gt_areas[g] - inter - intersection.get((0, p), 0)
            iou = inter / union
            if iou > 0.5:
                tp[g // 1000] += 1
                iou_sum[g // 1000] += iou
                matched_gt.add(g)
                matched_pred.add(p)
        for g in gt_areas:
            if g != 0 and g not in matched_gt:
                fn[g // 1000] += 1
        for p, area in pred_areas.items():
            if p == 0 or p in matched_pred:
                continue
            if intersection.get((0, p), 0) / area > 0.5:
                continue
            fp[p // 1000] += 1
    values = []
    for c in categories:
        if tp[c] + fp[c] + fn[c] == 0:
            continue
        values.append(iou_sum[c] / (tp[c] + 0.5 * fp[c] + 0.5 * fn[c]))
    return float(np.mean(values))


def findlit_pq(data: list[dict[str, Any]]) -> float:
    metric = SegmentationMetrics(THINGS, STUFFS, num_classes=len(THINGS) + len(STUFFS), include=["PQ"])
    # one image per update, as the segmentation task feeds it (images of a batch have their own sizes)
    for item in data:
        pred = torch.from_numpy(item["pred"])[None]
        metric.update(panoptic_pred=pred, panoptic_target=torch.from_numpy(item["target"])[None])
    return float(metric.compute()["PQ"])


# -- PQ from panoptic PNG files: panopticapi itself vs findlit -------------------------------------


def _segment_ids(panoptic: np.ndarray) -> np.ndarray:
    """int64[h,w] panopticapi segment ids of a (category, instance) map: category * 1000 + instance."""
    return np.where(panoptic[..., 0] == VOID_CATEGORY, 0, panoptic[..., 0] * 1000 + panoptic[..., 1])


def write_panoptic_files(data: list[dict[str, Any]], folder: Path) -> dict[str, Any]:
    """Write targets and predictions as COCO panoptic PNGs + JSON; return what both readers need."""
    sides: dict[str, list[dict[str, Any]]] = {"gt": [], "pred": []}
    for image_id, item in enumerate(data, start=1):
        for side, key in (("gt", "target"), ("pred", "pred")):
            ids = _segment_ids(item[key])
            (folder / side).mkdir(parents=True, exist_ok=True)
            name = f"{image_id:012d}.png"
            rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
            Image.fromarray(rgb).save(folder / side / name)
            present, area = np.unique(ids[ids != 0], return_counts=True)
            segments = [
                {"id": int(i), "category_id": int(i // 1000), "iscrowd": 0, "area": int(a)}
                for i, a in zip(present, area, strict=True)
            ]
            sides[side].append({"image_id": image_id, "file_name": name, "segments_info": segments})
    categories = {c: {"id": c, "isthing": int(c in THINGS)} for c in [*THINGS, *STUFFS]}
    return {"folder": folder, "annotations": sides, "categories": categories}


def panopticapi_pq(files: dict[str, Any]) -> float:
    """panopticapi's ``pq_compute_single_core`` on the files (it decodes the PNGs), then its average."""
    from panopticapi.evaluation import pq_compute_single_core

    pairs = list(zip(files["annotations"]["gt"], files["annotations"]["pred"], strict=True))
    # each call gets fresh segment dicts: panopticapi writes the predicted areas into them
    pairs = [(gt, json.loads(json.dumps(pred))) for gt, pred in pairs]
    folder = files["folder"]
    with contextlib.redirect_stdout(io.StringIO()):
        stat = pq_compute_single_core(0, pairs, str(folder / "gt"), str(folder / "pred"), files["categories"])
        return float(stat.pq_average(files["categories"], isthing=None)[0]["pq"])


def findlit_pq_from_files(files: dict[str, Any]) -> float:
    """findlit's PanopticQuality fed from the same PNGs and segment lists."""
    metric = PanopticQuality(things=THINGS, stuffs=STUFFS)
    folder = files["folder"]
    for gt, pred in zip(files["annotations"]["gt"], files["annotations"]["pred"], strict=True):
        inputs = []
        for side, annotation in (("pred", pred), ("gt", gt)):
            segments = annotation["segments_info"]
            inputs.append(
                PanopticSegments.of(
                    torch.from_numpy(read_panoptic_ids(folder / side / annotation["file_name"])),
                    [s["id"] for s in segments],
                    [s["category_id"] for s in segments],
                    [bool(s["iscrowd"]) for s in segments],
                )
            )
        metric.update([inputs[0]], [inputs[1]])
    return float(metric.compute()["PQ"])


# -- mask AP -----------------------------------------------------------------------------------------


def pycocotools_ap(data: list[dict[str, Any]]) -> float:
    size = data[0]["target"].shape[:2]
    images, annotations, results = [], [], []
    for image_id, item in enumerate(data, start=1):
        images.append({"id": image_id, "height": size[0], "width": size[1]})
        for mask, label in zip(item["target_masks"], item["target_labels"], strict=True):
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            area = float(mask_utils.area(rle))
            bbox = mask_utils.toBbox(rle).tolist()
            rle["counts"] = rle["counts"].decode()
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(label),
                    "segmentation": rle,
                    "area": area,
                    "bbox": bbox,
                    "iscrowd": 0,
                }
            )
        for mask, label, score in zip(item["pred_masks"], item["pred_labels"], item["scores"], strict=True):
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            results.append(
                {"image_id": image_id, "category_id": int(label), "segmentation": rle, "score": float(score)}
            )
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations, "categories": [{"id": c} for c in THINGS]}
        gt.createIndex()
        dt = gt.loadRes(results)
        evaluation = COCOeval(gt, dt, "segm")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return float(evaluation.stats[0])


def findlit_ap(data: list[dict[str, Any]]) -> float:
    metric = SegmentationMetrics(THINGS, STUFFS, num_classes=len(THINGS) + len(STUFFS), include=["AP"])
    for start in range(0, len(data), 8):
        chunk = data[start : start + 8]
        metric.update(
            instance_preds=[
                {
                    "masks": torch.from_numpy(item["pred_masks"]),
                    "scores": torch.from_numpy(item["scores"]),
                    "labels": torch.from_numpy(item["pred_labels"]),
                }
                for item in chunk
            ],
            instance_targets=[
                {
                    "masks": torch.from_numpy(item["target_masks"]),
                    "labels": torch.from_numpy(item["target_labels"]),
                }
                for item in chunk
            ],
        )
    return float(metric.compute()["AP"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="seconds-long sanity run (20 images at 128 px)")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--panopticapi",
        type=Path,
        default=os.environ.get("FINDLIT_PANOPTICAPI"),
        help="folder holding the panopticapi package (a checkout of cocodataset/panopticapi)",
    )
    args = parser.parse_args()
    if args.quick:
        args.images, args.size, args.repeats = 20, 128, 1
    data = make_data(args.images, args.size)
    values: dict[str, float] = {}
    scratch = tempfile.TemporaryDirectory()
    inputs: dict[str, Any] = {"data": data}
    functions: dict[str, Any] = {
        "findlit_pq": (findlit_pq, "data"),
        "reference_pq": (reference_pq, "data"),
        "findlit_ap": (findlit_ap, "data"),
        "pycocotools_ap": (pycocotools_ap, "data"),
    }
    if args.panopticapi is not None:
        sys.path.insert(0, str(args.panopticapi))
        inputs["files"] = write_panoptic_files(data, Path(scratch.name))
        functions["findlit_pq_from_files"] = (findlit_pq_from_files, "files")
        functions["panopticapi_pq"] = (panopticapi_pq, "files")
    else:
        print("no --panopticapi: panopticapi itself is not timed", flush=True)

    def keep(name: str) -> Any:
        function, source = functions[name]
        return lambda: values.__setitem__(name, function(inputs[source]))

    steps = {name: keep(name) for name in functions}
    for function, source in functions.values():
        if source == "data":
            function(data[:2])  # warm-up on 2 images (a full untimed round would double the run)
    times = alternate(steps, args.repeats, warmup=1 if args.panopticapi is not None and args.quick else 0)
    scratch.cleanup()
    rows = {name: summary(t) for name, t in times.items()}
    for name in steps:
        print(f"{name}: {values[name]:.4f} in {rows[name]['median_s']:.3f} s (median)", flush=True)
    pq_ratio = rows["findlit_pq"]["median_s"] / rows["reference_pq"]["median_s"]
    ap_ratio = rows["findlit_ap"]["median_s"] / rows["pycocotools_ap"]["median_s"]
    ratios = {
        "pq_findlit_over_reference": (round(pq_ratio, 3), "reported (<= 1.0 is faster)", pq_ratio <= 1.0),
        "ap_findlit_over_pycocotools": (round(ap_ratio, 3), "reported (<= 1.0 is faster)", ap_ratio <= 1.0),
    }
    spreads = {
        "pq_findlit_over_reference": spread(paired_ratios(times["findlit_pq"], times["reference_pq"])),
        "ap_findlit_over_pycocotools": spread(paired_ratios(times["findlit_ap"], times["pycocotools_ap"])),
    }
    agree = {
        "pq_agrees": abs(values["findlit_pq"] - values["reference_pq"]) < 1e-6,
        "ap_agrees": abs(values["findlit_ap"] - values["pycocotools_ap"]) < 1e-4,
    }
    if args.panopticapi is not None:
        files_ratio = rows["findlit_pq_from_files"]["median_s"] / rows["panopticapi_pq"]["median_s"]
        ratios["pq_findlit_over_panopticapi"] = (round(files_ratio, 3), "<= 1.0", files_ratio <= 1.0)
        spreads["pq_findlit_over_panopticapi"] = spread(
            paired_ratios(times["findlit_pq_from_files"], times["panopticapi_pq"])
        )
        agree["pq_equals_panopticapi"] = (
            abs(values["findlit_pq_from_files"] - values["panopticapi_pq"]) < 1e-6
        )
    finish(
        "metric_speed",
        {
            "settings": {
                "images": args.images,
                "size": args.size,
                "repeats": args.repeats,
                "quick": args.quick,
            },
            "values": {name: round(value, 6) for name, value in values.items()},
            **agree,
            "times": rows,
        },
        ratios,
        spreads,
    )


if __name__ == "__main__":
    main()
