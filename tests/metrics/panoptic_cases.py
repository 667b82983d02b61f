"""Predictions for the PQ equality tests: the COCO sample's ground truth, perturbed in known ways.

Each case is a seeded perturbation of the two real COCO panoptic annotations in tests/data/coco_sample
(shifts, dropped and merged segments, relabelled categories, coarse masks, false positives on void
and crowd regions...). The figures of the official panopticapi ``pq_compute`` on these cases are kept
in ``fixtures/panopticapi_pq.json``; findlit's :class:`~findlit.metrics.panoptic_quality.PanopticQuality`
must give the same. To regenerate the figures (panopticapi is not a dependency of findlit; bring it
with the search tool's ``fetch`` or ``git clone https://github.com/cocodataset/panopticapi``)::

    .venv/bin/python -m tests.metrics.panoptic_cases --panopticapi /path/to/panopticapi --out /tmp/pq_cases

It writes every case as PNGs + JSON under ``--out``, runs panopticapi's ``pq_compute`` on each in a
separate process, and rewrites the fixture file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tests.fixtures import COCO_SAMPLE

FIXTURE = Path(__file__).parent / "fixtures" / "panopticapi_pq.json"
GT_JSON = COCO_SAMPLE / "annotations" / "panoptic_val2017.json"
GT_FOLDER = COCO_SAMPLE / "panoptic_val2017"


@dataclass
class ImageSegments:
    """One image's panoptic segmentation: int64[H,W] ids (0 = void) and its segments_info list."""

    image_id: int
    file_name: str
    ids: np.ndarray
    segments: list[dict[str, Any]]


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """int64[H,W] segment ids of a panoptic PNG's uint8[H,W,3] (id = R + 256 G + 256^2 B)."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """uint8[H,W,3] of int64[H,W] segment ids (inverse of :func:`rgb_to_id`)."""
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)


def ground_truth() -> tuple[list[ImageSegments], list[dict[str, Any]]]:
    """The sample's annotations (id maps from the PNGs) and its 133 categories."""
    document = json.loads(GT_JSON.read_text())
    images = []
    for annotation in document["annotations"]:
        rgb = np.asarray(Image.open(GT_FOLDER / annotation["file_name"]).convert("RGB"))
        images.append(
            ImageSegments(
                int(annotation["image_id"]),
                annotation["file_name"],
                rgb_to_id(rgb),
                [dict(s) for s in annotation["segments_info"]],
            )
        )
    return images, document["categories"]


def _prediction(image: ImageSegments, ids: np.ndarray, categories: dict[int, int]) -> ImageSegments:
    """A prediction of ``ids`` listing every nonzero id present, with the given categories."""
    present = sorted(int(i) for i in np.unique(ids) if i != 0)
    segments = [{"id": i, "category_id": int(categories[i])} for i in present]
    return ImageSegments(image.image_id, image.file_name, ids, segments)


def _categories(image: ImageSegments) -> dict[int, int]:
    return {int(s["id"]): int(s["category_id"]) for s in image.segments}


def perfect(image: ImageSegments, rng: np.random.Generator, pool: list[int]) -> ImageSegments:
    """The ground truth itself (crowd regions predicted as ordinary segments)."""
    return _prediction(image, image.ids.copy(), _categories(image))


def shifted(image: ImageSegments, rng: np.random.Generator, pool: list[int]) -> ImageSegments:
    """Every segment moved by a few pixels (the uncovered border is void)."""
    dy, dx = (int(v) for v in rng.integers(3, 25, size=2))
    ids = np.zeros_like(image.ids)
    ids[dy:, dx:] = image.ids[:-dy, :-dx]
    return _prediction(image, ids, _categories(image))


def dropped(image: ImageSegments, rng: np.random.Generator, pool: list[int]) -> ImageSegments:
    """A third of the segments left unassigned (void in the prediction)."""
    ids = image.ids.copy()
    for segment in image.segments:
        if rng.random() < 0.33:
            ids[ids == segment["id"]] = 0
    return _prediction(image, ids, _categories(image))


def relabelled(image: ImageSegments, rng: np.random.Generator, pool: list[int]) -> ImageSegments:
    """A third of the segments given another category."""
    categories = _categories(image)
    for segment_id in list(categories):
        if rng.random() < 0.33:
            categories[segment_id] = int(rng.choice(pool))
    return _prediction(image, image.ids.copy(), categories)


def merged(image: ImageSegments, rng: np.random.Generator, pool: list[int]) -> ImageSegments:
    """Segments of one category merged into one (instances lost), the rest kept."""
    ids = image.ids.copy()
    by_category: dict[int, list[int]] = {}
    for segment in image.segments:
        by_category.setdefault(int(segment["category_id"]), []).append(int(segment["id"]))
    for members in by_category.values():
        for member in members[1:]:
            ids[ids == member] = members[0]
    return _prediction(image, ids, _categories(image))


def coarse(image: ImageSegments, rng: np.random.Generator, pool: list[int]) -> ImageSegments:
    """Masks at 1/16 of the resolution, upsampled by nearest neighbour (blocky borders)."""
    factor = 16
    small = image.ids[::factor, ::factor]
    ids = np.repeat(np.repeat(small, factor, axis=0), factor, axis=1)[
        : image.ids.shape[0], : image.ids.shape[1]
    ]
    return _prediction(image, ids, _categories(image))


def false_positives(image: ImageSegments, rng: np.random.Generator, pool: list[int]) -> ImageSegments:
    """Random rectangles pasted as new segments: over void, over crowd regions, anywhere."""
    ids = image.ids.copy()
    categories = _categories(image)
    height, width = ids.shape
    crowd = [s for s in image.segments if s["iscrowd"]]
    next_id = int(ids.max()) + 1
    for k in range(8):
        h, w = int(rng.integers(10, height // 3)), int(rng.integers(10, width // 3))
        if k < len(crowd):  # a box inside a crowd region, of the crowd's category
            rows, cols = np.nonzero(image.ids == crowd[k]["id"])
            y, x = int(rows.mean()) - h // 2, int(cols.mean()) - w // 2
            category = int(crowd[k]["category_id"])
        elif k % 2 == 0:  # on void pixels
            rows, cols = np.nonzero(image.ids == 0)
            pick = int(rng.integers(len(rows)))
            y, x, category = int(rows[pick]) - h // 2, int(cols[pick]) - w // 2, int(rng.choice(pool))
        else:
            y, x, category = (
                int(rng.integers(0, height - h)),
                int(rng.integers(0, width - w)),
                int(rng.choice(pool)),
            )
        ids[max(y, 0) : max(y, 0) + h, max(x, 0) : max(x, 0) + w] = next_id
        categories[next_id] = category
        next_id += 1
    return _prediction(image, ids, categories)


def mixed(image: ImageSegments, rng: np.random.Generator, pool: list[int]) -> ImageSegments:
    """Shift, then drop, relabel and add false positives, in that order."""
    result = shifted(image, rng, pool)
    for step in (dropped, relabelled, false_positives):
        result = step(
            ImageSegments(image.image_id, image.file_name, result.ids, _with_crowd(result, image)), rng, pool
        )
    return result


def _with_crowd(prediction: ImageSegments, truth: ImageSegments) -> list[dict[str, Any]]:
    """The prediction's segments with ``iscrowd`` where the truth's segment of that id is crowd."""
    crowd = {int(s["id"]) for s in truth.segments if s["iscrowd"]}
    return [{**s, "iscrowd": int(s["id"] in crowd)} for s in prediction.segments]


PERTURBATIONS: dict[str, Callable[[ImageSegments, np.random.Generator, list[int]], ImageSegments]] = {
    "perfect": perfect,
    "shifted": shifted,
    "dropped": dropped,
    "relabelled": relabelled,
    "merged": merged,
    "coarse": coarse,
    "false_positives": false_positives,
    "mixed_seed0": mixed,
    "mixed_seed1": mixed,
    "mixed_seed2": mixed,
}
"""Case name -> the perturbation applied to every image (seeded by the case's position)."""


def cases() -> Iterator[tuple[str, list[ImageSegments], list[ImageSegments], list[dict[str, Any]]]]:
    """(name, ground truth, predictions, categories) of every case, always the same."""
    truth, categories = ground_truth()
    pool = [int(c["id"]) for c in categories]
    for seed, (name, perturb) in enumerate(PERTURBATIONS.items()):
        rng = np.random.default_rng(seed)
        yield name, truth, [perturb(image, rng, pool) for image in truth], categories


def _write_case(folder: Path, predictions: list[ImageSegments]) -> Path:
    """Write ``predictions`` as panopticapi reads them: ``<folder>/pred/*.png`` and ``pred.json``."""
    (folder / "pred").mkdir(parents=True, exist_ok=True)
    annotations = []
    for prediction in predictions:
        Image.fromarray(id_to_rgb(prediction.ids)).save(folder / "pred" / prediction.file_name)
        annotations.append(
            {
                "image_id": prediction.image_id,
                "file_name": prediction.file_name,
                "segments_info": prediction.segments,
            }
        )
    path = folder / "pred.json"
    path.write_text(json.dumps({"annotations": annotations}))
    return path


PANOPTICAPI_RUNNER = """
import json, sys
from panopticapi.evaluation import pq_compute
results = pq_compute(sys.argv[1], sys.argv[2], gt_folder=sys.argv[3], pred_folder=sys.argv[4])
print("RESULTS " + json.dumps(results, default=float))
"""


def main() -> None:
    """Write every case, score it with panopticapi's ``pq_compute``, rewrite the fixture."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--panopticapi", type=Path, required=True, help="folder holding the panopticapi package"
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for the written cases")
    args = parser.parse_args()
    figures: dict[str, Any] = {}
    for name, _, predictions, _ in cases():
        pred_json = _write_case(args.out / name, predictions)
        environment = {**os.environ, "PYTHONPATH": str(args.panopticapi)}
        output = subprocess.run(
            [
                sys.executable,
                "-c",
                PANOPTICAPI_RUNNER,
                str(GT_JSON),
                str(pred_json),
                str(GT_FOLDER),
                str(args.out / name / "pred"),
            ],
            capture_output=True,
            text=True,
            check=True,
            env=environment,
        ).stdout
        line = next(line for line in output.splitlines() if line.startswith("RESULTS "))
        figures[name] = json.loads(line[len("RESULTS ") :])
        print(name, {k: round(v["pq"], 6) for k, v in figures[name].items() if k != "per_class"})
    FIXTURE.parent.mkdir(exist_ok=True)
    FIXTURE.write_text(
        json.dumps({"source": "panopticapi pq_compute", "cases": figures}, indent=1, sort_keys=True) + "\n"
    )
    print(f"wrote {FIXTURE}")


if __name__ == "__main__":
    main()
