"""Benchmark 7: evaluation at COCO scale, findlit's metrics vs panopticapi + pycocotools.

    .venv/bin/python scripts/bench/coco_scale_eval.py --panopticapi DIR [--images 5000] [--repeats 1]
        [--data DIR] [--quick]

The data: ``--images`` generated 640 x 480 panoptic images (seeded) with about 20 segments each
(4 stuff bands, 16 things, a void border) in COCO's 133 categories (80 things, 53 stuff), and a
prediction of each (bands moved, things shifted, missed, relabelled, 2 false positives, unassigned
pixels), written once (untimed, kept in ``--data`` for re-runs) in the official formats:

- ``gt/panoptic.json`` + PNGs and ``pred/panoptic.json`` + PNGs (COCO panoptic);
- ``gt/instances.json`` (COCO instances, RLE) and ``pred/instances_results.json`` (COCO results);
- ``gt/semantic/*.png`` and ``pred/semantic/*.png`` (class index per pixel; 255 marks void in the
  target, the prediction labels every pixel).

Each side starts from these files and ends with PQ (all, things, stuff), mask AP and mIoU, in a
process of its own (so its peak resident memory is its own, read from ``VmHWM``):

- official: panopticapi's ``pq_compute_single_core`` (one process, as findlit's metrics run in
  one), pycocotools' ``COCOeval`` (segm), and mIoU from a NumPy confusion matrix (``bincount`` of
  target x 133 + prediction, as detectron2's semantic evaluator does);
- findlit: reads the same PNGs (PIL) and RLEs (pycocotools), and feeds
  ``findlit.metrics.SegmentationMetrics`` one image per update, as ``findlit test`` does, then
  ``compute``. Its time is also split into reading and metric work.

Ratios: time findlit / official (goal <= 1.5), findlit's metric work alone (its reading of the
files left out: ``findlit test`` has its predictions in memory) / official (reported), and peak
memory findlit / official (reported). The
values of both sides are printed and must agree (PQ to 1e-6, AP to 1e-4, mIoU to 1e-6).
panopticapi is not on PyPI: give a checkout with ``--panopticapi`` (or ``FINDLIT_PANOPTICAPI``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import finish, machine_load, paired_ratios, spread, summary
from PIL import Image

HEIGHT, WIDTH = 480, 640
THINGS = list(range(1, 81))
STUFFS = list(range(81, 134))
CATEGORIES = [*THINGS, *STUFFS]
IGNORE = 255
"""Semantic label of void pixels; class index = category id - 1."""
SCHEMA = 1
"""Bumped when the generated files change, so a stale --data folder is regenerated."""


# -- generated data, written in the official formats ---------------------------------------------


def _paint_bands(ids: np.ndarray, splits: list[int], first_id: int) -> None:
    edges = [0, *splits, ids.shape[0]]
    for k in range(len(edges) - 1):
        ids[edges[k] : edges[k + 1]] = first_id + k


def _shape(generator: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of a rectangle or ellipse's bounding box and its bool[h,w] footprint."""
    h, w = (int(v) for v in generator.integers(20, 160, 2))
    y, x = int(generator.integers(0, HEIGHT - h)), int(generator.integers(0, WIDTH - w))
    if generator.random() < 0.5:
        footprint = np.ones((h, w), dtype=bool)
    else:
        yy, xx = np.mgrid[:h, :w]
        footprint = ((yy - h / 2 + 0.5) / (h / 2)) ** 2 + ((xx - w / 2 + 0.5) / (w / 2)) ** 2 <= 1
    return np.array([y, x, h, w]), footprint


def _put(ids: np.ndarray, box: np.ndarray, footprint: np.ndarray, segment: int) -> None:
    y, x, h, w = (int(v) for v in box)
    window = ids[y : y + h, x : x + w]
    window[footprint] = segment


def make_image(seed: int) -> dict[str, Any]:
    """One image: target and prediction segment maps int32[H,W] (0 void), their categories, scores."""
    generator = np.random.default_rng(seed)
    target = np.zeros((HEIGHT, WIDTH), dtype=np.int32)
    pred = np.zeros((HEIGHT, WIDTH), dtype=np.int32)
    splits = sorted(int(s) for s in generator.choice(np.arange(60, HEIGHT - 60), 3, replace=False))
    stuff = [int(c) for c in generator.choice(STUFFS, 4, replace=False)]
    _paint_bands(target, splits, 1)
    _paint_bands(pred, [s + int(generator.integers(-12, 13)) for s in splits], 1)
    target_category = {k + 1: c for k, c in enumerate(stuff)}
    pred_category = dict(target_category)
    if generator.random() < 0.3:  # a stuff band of the wrong class
        pred_category[int(generator.integers(1, 5))] = int(generator.choice(STUFFS))
    for k in range(16):
        segment = 5 + k
        box, footprint = _shape(generator)
        category = int(generator.choice(THINGS))
        _put(target, box, footprint, segment)
        target_category[segment] = category
        if generator.random() < 0.12:  # missed
            continue
        h, w = int(box[2]), int(box[3])
        moved = box.copy()
        moved[0] = np.clip(box[0] + generator.integers(-h // 5, h // 5 + 1), 0, HEIGHT - h)
        moved[1] = np.clip(box[1] + generator.integers(-w // 5, w // 5 + 1), 0, WIDTH - w)
        _put(pred, moved, footprint, segment)
        pred_category[segment] = category if generator.random() > 0.1 else int(generator.choice(THINGS))
    for k in range(2):  # false positives
        box, footprint = _shape(generator)
        _put(pred, box, footprint, 30 + k)
        pred_category[30 + k] = int(generator.choice(THINGS))
    border = int(generator.integers(4, 16))
    target[:border], target[:, :border] = 0, 0  # void border
    y, x = int(generator.integers(0, HEIGHT - 40)), int(generator.integers(0, WIDTH - 40))
    pred[y : y + 40, x : x + 40] = 0  # unassigned pixels
    return {
        "target": target,
        "pred": pred,
        "target_category": target_category,
        "pred_category": pred_category,
        "scores": {s: float(generator.random()) for s in pred_category},
    }


def _present(ids: np.ndarray) -> tuple[list[int], list[int]]:
    values, counts = np.unique(ids[ids != 0], return_counts=True)
    return [int(v) for v in values], [int(c) for c in counts]


def _write_png(ids: np.ndarray, path: Path) -> None:
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(path)


def _semantic(ids: np.ndarray, category: dict[int, int]) -> np.ndarray:
    """uint8[H,W] class index (category id - 1) per pixel, void -> IGNORE."""
    lookup = np.full(int(ids.max()) + 1, IGNORE, dtype=np.uint8)
    for segment, c in category.items():
        if segment < len(lookup):
            lookup[segment] = c - 1
    return lookup[ids]


def generate(folder: Path, images: int) -> None:
    """Write ``images`` generated images' ground truth and predictions in the official formats."""
    from pycocotools import mask as mask_utils

    for side in ("gt", "pred"):
        (folder / side / "panoptic").mkdir(parents=True, exist_ok=True)
        (folder / side / "semantic").mkdir(parents=True, exist_ok=True)
    panoptic: dict[str, list[dict[str, Any]]] = {"gt": [], "pred": []}
    image_entries, annotations, results = [], [], []
    for image_id in range(1, images + 1):
        item = make_image(image_id)
        name = f"{image_id:012d}.png"
        image_entries.append({"id": image_id, "file_name": name, "height": HEIGHT, "width": WIDTH})
        for side, ids, category in (
            ("gt", item["target"], item["target_category"]),
            ("pred", item["pred"], item["pred_category"]),
        ):
            _write_png(ids, folder / side / "panoptic" / name)
            labels = _semantic(ids, category)
            if side == "pred":
                labels[labels == IGNORE] = 0  # a semantic prediction labels every pixel
            Image.fromarray(labels).save(folder / side / "semantic" / name)
            present, areas = _present(ids)
            segments = [
                {"id": s, "category_id": category[s], "iscrowd": 0, "area": a}
                for s, a in zip(present, areas, strict=True)
            ]
            panoptic[side].append({"image_id": image_id, "file_name": name, "segments_info": segments})
            for s in present:
                if category[s] not in THINGS:
                    continue
                rle = mask_utils.encode(np.asfortranarray((ids == s).astype(np.uint8)))
                rle["counts"] = rle["counts"].decode("ascii")
                if side == "gt":
                    annotations.append(
                        {
                            "id": len(annotations) + 1,
                            "image_id": image_id,
                            "category_id": category[s],
                            "segmentation": rle,
                            "area": float(mask_utils.area(rle)),
                            "bbox": mask_utils.toBbox(rle).tolist(),
                            "iscrowd": 0,
                        }
                    )
                else:
                    results.append(
                        {
                            "image_id": image_id,
                            "category_id": category[s],
                            "segmentation": rle,
                            "score": item["scores"][s],
                        }
                    )
    categories = [{"id": c, "name": f"c{c}", "isthing": int(c in THINGS)} for c in CATEGORIES]
    for side in ("gt", "pred"):
        document = {"images": image_entries, "annotations": panoptic[side], "categories": categories}
        (folder / side / "panoptic.json").write_text(json.dumps(document))
    instances = {"images": image_entries, "annotations": annotations, "categories": categories}
    (folder / "gt" / "instances.json").write_text(json.dumps(instances))
    (folder / "pred" / "instances_results.json").write_text(json.dumps(results))
    (folder / "manifest.json").write_text(json.dumps({"images": images, "schema": SCHEMA}))


# -- the two scorers, each run in a process of its own ----------------------------------------------


def _peak_memory_mib() -> float:
    """This process's peak resident memory (VmHWM), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def score_official(folder: Path) -> dict[str, Any]:
    """panopticapi's pq_compute_single_core, pycocotools' COCOeval, a NumPy confusion-matrix mIoU."""
    from panopticapi.evaluation import pq_compute_single_core
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    started = time.perf_counter()
    gt = json.loads((folder / "gt" / "panoptic.json").read_text())
    pred = json.loads((folder / "pred" / "panoptic.json").read_text())
    categories = {c["id"]: c for c in gt["categories"]}
    pairs = list(zip(gt["annotations"], pred["annotations"], strict=True))
    with contextlib.redirect_stdout(io.StringIO()):
        stat = pq_compute_single_core(
            0, pairs, str(folder / "gt" / "panoptic"), str(folder / "pred" / "panoptic"), categories
        )
    pq = {
        "PQ": stat.pq_average(categories, isthing=None)[0]["pq"],
        "SQ": stat.pq_average(categories, isthing=None)[0]["sq"],
        "RQ": stat.pq_average(categories, isthing=None)[0]["rq"],
        "PQ_th": stat.pq_average(categories, isthing=True)[0]["pq"],
        "PQ_st": stat.pq_average(categories, isthing=False)[0]["pq"],
    }
    pq_done = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(folder / "gt" / "instances.json"))
        results = truth.loadRes(str(folder / "pred" / "instances_results.json"))
        evaluation = COCOeval(truth, results, iouType="segm")
        evaluation.params.catIds = THINGS
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    ap_done = time.perf_counter()
    confusion = np.zeros(len(CATEGORIES) ** 2, dtype=np.int64)
    for entry in gt["annotations"]:
        target = np.asarray(Image.open(folder / "gt" / "semantic" / entry["file_name"])).astype(np.int64)
        guess = np.asarray(Image.open(folder / "pred" / "semantic" / entry["file_name"])).astype(np.int64)
        valid = target != IGNORE
        confusion += np.bincount(target[valid] * len(CATEGORIES) + guess[valid], minlength=confusion.size)
    matrix = confusion.reshape(len(CATEGORIES), len(CATEGORIES))
    union = matrix.sum(0) + matrix.sum(1) - np.diag(matrix)
    miou = float((np.diag(matrix)[union > 0] / union[union > 0]).mean())
    done = time.perf_counter()
    return {
        "values": {**pq, "AP": float(evaluation.stats[0]), "mIoU": miou},
        "seconds": {
            "total": done - started,
            "PQ": pq_done - started,
            "AP": ap_done - pq_done,
            "mIoU": done - ap_done,
        },
    }


def score_findlit(folder: Path) -> dict[str, Any]:
    """Read the files, then findlit's SegmentationMetrics: one image per update, then compute."""
    import torch
    from pycocotools import mask as mask_utils

    from findlit.data.decode import read_panoptic_ids
    from findlit.metrics import VOID_CATEGORY, SegmentationMetrics

    started = time.perf_counter()
    reading = 0.0
    metrics = SegmentationMetrics(THINGS, STUFFS, num_classes=len(CATEGORIES), ignore_index=IGNORE)
    gt = json.loads((folder / "gt" / "panoptic.json").read_text())
    pred = json.loads((folder / "pred" / "panoptic.json").read_text())
    instances = json.loads((folder / "gt" / "instances.json").read_text())["annotations"]
    results = json.loads((folder / "pred" / "instances_results.json").read_text())
    by_image: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for side, entries in (("gt", instances), ("pred", results)):
        for entry in entries:
            by_image.setdefault(entry["image_id"], {"gt": [], "pred": []})[side].append(entry)
    reading += time.perf_counter() - started

    def panoptic_map(side: str, entry: dict[str, Any]) -> torch.Tensor:
        """int64[1,H,W,2] (category, segment id) from a panoptic PNG and its segments."""
        ids = read_panoptic_ids(folder / side / "panoptic" / entry["file_name"])
        category = np.full(int(ids.max()) + 1, VOID_CATEGORY, dtype=np.int64)
        for segment in entry["segments_info"]:
            category[segment["id"]] = segment["category_id"]
        return torch.from_numpy(np.stack([category[ids], ids], axis=-1))[None]

    def instance_set(entries: list[dict[str, Any]], with_scores: bool) -> dict[str, torch.Tensor]:
        if entries:
            masks = mask_utils.decode([e["segmentation"] for e in entries]).transpose(2, 0, 1)
        else:
            masks = np.zeros((0, HEIGHT, WIDTH), dtype=np.uint8)
        out = {
            "masks": torch.from_numpy(masks.astype(bool)),
            "labels": torch.tensor([e["category_id"] for e in entries], dtype=torch.int64),
        }
        if with_scores:
            out["scores"] = torch.tensor([e["score"] for e in entries], dtype=torch.float32)
        return out

    def semantic(side: str, name: str) -> torch.Tensor:
        return torch.from_numpy(np.asarray(Image.open(folder / side / "semantic" / name)).astype(np.int64))[
            None
        ]

    for truth_entry, pred_entry in zip(gt["annotations"], pred["annotations"], strict=True):
        read_started = time.perf_counter()
        image = by_image.get(truth_entry["image_id"], {"gt": [], "pred": []})
        name = truth_entry["file_name"]
        semantic_target = semantic("gt", name)
        semantic_pred = semantic("pred", name)
        update = {
            "panoptic_pred": panoptic_map("pred", pred_entry),
            "panoptic_target": panoptic_map("gt", truth_entry),
            "instance_preds": [instance_set(image["pred"], with_scores=True)],
            "instance_targets": [instance_set(image["gt"], with_scores=False)],
            "semantic_pred": semantic_pred,
            "semantic_target": semantic_target,
        }
        reading += time.perf_counter() - read_started
        metrics.update(**update)
    values = {k: float(v) for k, v in metrics.compute().items()}
    done = time.perf_counter()
    wanted = ("PQ", "SQ", "RQ", "PQ_th", "PQ_st", "AP", "mIoU")
    return {
        "values": {k: values[k] for k in wanted},
        "seconds": {"total": done - started, "reading": reading, "metrics": done - started - reading},
    }


def _score_in_subprocess(side: str, folder: Path, panopticapi: Path) -> dict[str, Any]:
    environment = {**os.environ, "FINDLIT_PANOPTICAPI": str(panopticapi)}
    command = [sys.executable, __file__, "--score", side, "--data", str(folder)]
    completed = subprocess.run(command, capture_output=True, text=True, env=environment, check=False)
    if completed.returncode != 0:
        raise SystemExit(f"the {side} scorer failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a sanity run on 50 images")
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--data", type=Path, default=Path("bench") / "coco_scale_data")
    parser.add_argument(
        "--panopticapi",
        type=Path,
        default=os.environ.get("FINDLIT_PANOPTICAPI"),
        help="folder holding the panopticapi package (a checkout of cocodataset/panopticapi)",
    )
    parser.add_argument("--score", choices=["official", "findlit"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.score is not None:  # a scorer's own process
        if args.score == "official":
            sys.path.insert(0, os.environ["FINDLIT_PANOPTICAPI"])
            result = score_official(args.data)
        else:
            result = score_findlit(args.data)
        print(json.dumps({**result, "peak_mib": _peak_memory_mib()}))
        return
    if args.panopticapi is None:
        raise SystemExit("coco_scale_eval: give --panopticapi DIR (a checkout of cocodataset/panopticapi)")
    if args.quick:
        args.images, args.data = 50, args.data.with_name(args.data.name + "_quick")
    manifest = args.data / "manifest.json"
    wanted = {"images": args.images, "schema": SCHEMA}
    if not manifest.is_file() or json.loads(manifest.read_text()) != wanted:
        print(f"generating {args.images} images of {WIDTH}x{HEIGHT} into {args.data} (untimed)", flush=True)
        started = time.perf_counter()
        generate(args.data, args.images)
        print(f"generated in {time.perf_counter() - started:.0f} s", flush=True)
    load_before = machine_load()
    runs: dict[str, list[dict[str, Any]]] = {"findlit": [], "official": []}
    for repeat in range(args.repeats):
        order = ("findlit", "official") if repeat % 2 == 0 else ("official", "findlit")
        for side in order:
            runs[side].append(_score_in_subprocess(side, args.data, args.panopticapi))
            last = runs[side][-1]
            print(
                f"{side}: {last['seconds']['total']:.1f} s, peak {last['peak_mib']:.0f} MiB, "
                f"{json.dumps({k: round(v, 6) for k, v in last['values'].items()})}",
                flush=True,
            )
    load_after = machine_load()
    times = {side: [run["seconds"]["total"] for run in runs[side]] for side in runs}
    memory = {side: max(run["peak_mib"] for run in runs[side]) for side in runs}
    time_ratio = summary(times["findlit"])["median_s"] / summary(times["official"])["median_s"]
    memory_ratio = memory["findlit"] / memory["official"]
    # findlit's metric work alone: what `findlit test` pays, its predictions being in memory already
    metric_times = [run["seconds"]["metrics"] for run in runs["findlit"]]
    metric_ratio = summary(metric_times)["median_s"] / summary(times["official"])["median_s"]
    ours, theirs = runs["findlit"][0]["values"], runs["official"][0]["values"]
    tolerance = {"PQ": 1e-6, "SQ": 1e-6, "RQ": 1e-6, "PQ_th": 1e-6, "PQ_st": 1e-6, "AP": 1e-4, "mIoU": 1e-6}
    agree = {name: abs(ours[name] - theirs[name]) <= tolerance[name] for name in tolerance}
    finish(
        "coco_scale_eval",
        {
            "settings": {"images": args.images, "height": HEIGHT, "width": WIDTH, "repeats": args.repeats},
            "values": {"findlit": ours, "official": theirs},
            "agree": agree,
            "times": {side: summary(t) for side, t in times.items()},
            "seconds": {side: [run["seconds"] for run in runs[side]] for side in runs},
            "peak_mib": memory,
            "load": {"before": load_before, "after": load_after},
        },
        {
            "coco_eval_time_findlit_over_official": (round(time_ratio, 3), "<= 1.5", time_ratio <= 1.5),
            "coco_eval_metric_time_findlit_over_official": (round(metric_ratio, 3), "reported", True),
            "coco_eval_peak_memory_findlit_over_official": (round(memory_ratio, 3), "reported", True),
        },
        {
            "coco_eval_time_findlit_over_official": spread(
                paired_ratios(times["findlit"], times["official"])
            ),
            "coco_eval_metric_time_findlit_over_official": spread(
                paired_ratios(metric_times, times["official"])
            ),
        },
    )


if __name__ == "__main__":
    main()
