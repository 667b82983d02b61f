"""Assembly of the annotation files from the per-image results (main process, in image order).

Writes COCO panoptic, instances and captions, the Karpathy split, the RefCOCO pickle and JSON,
the absent refs and FIND-Bench COCO-Entity. Every id that spans images is assigned here, in image
order, so the bytes written do not depend on the number of workers.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from findlit.data.synthetic.image_job import ImageResult
from findlit.data.synthetic.summary import SplitSummary
from findlit.data.synthetic.vocabulary import SPLIT_CODES, categories

_INFO = {
    "description": "findlit synthetic shapes-on-stuff dataset",
    "url": "",
    "version": "1.0",
    "year": 2025,
    "contributor": "findlit",
    "date_created": "",
}
_LICENSES = [
    {"url": "http://creativecommons.org/publicdomain/zero/1.0/", "id": 1, "name": "CC0 1.0 (generated data)"}
]


class _Counter:
    """A running id."""

    def __init__(self, start: int = 0) -> None:
        self.value = start

    def next(self) -> int:
        value = self.value
        self.value += 1
        return value


def _image_entry(r: ImageResult) -> dict[str, Any]:
    """Return an ``images`` entry in COCO's key order (no URLs or capture dates: generated images)."""
    return {
        "license": 1,
        "file_name": f"{r.image_id:012d}.jpg",
        "coco_url": "",
        "height": r.size,
        "width": r.size,
        "date_captured": "",
        "flickr_url": "",
        "id": r.image_id,
    }


def _short_image_entry(r: ImageResult) -> dict[str, Any]:
    """Return the short ``images`` entry of the entity file."""
    return {"id": r.image_id, "file_name": f"{r.image_id:012d}.jpg", "height": r.size, "width": r.size}


def _panoptic_json(results: Sequence[ImageResult], split: str) -> dict[str, Any]:
    annotations = [
        {
            "segments_info": [
                {"area": area, "category_id": cat, "iscrowd": 0, "id": sid, "bbox": bbox}
                for sid, cat, area, bbox, _ in r.segments
            ],
            "file_name": f"{r.image_id:012d}.png",
            "image_id": r.image_id,
        }
        for r in results
    ]
    return {
        "info": _INFO,
        "licenses": _LICENSES,
        "images": [_image_entry(r) for r in results],
        "annotations": annotations,
        "categories": categories(),
    }


def _instances_json(
    results: Sequence[ImageResult], split: str, ann_ids: _Counter
) -> tuple[dict[str, Any], dict[tuple[int, int], int]]:
    """COCO instances of every segment; also returns (image_id, segment_id) -> annotation id."""
    lookup: dict[tuple[int, int], int] = {}
    annotations = []
    for r in results:
        for sid, cat, area, bbox, counts in r.segments:
            ann_id = ann_ids.next()
            lookup[(r.image_id, sid)] = ann_id
            annotations.append(
                {
                    "segmentation": {"counts": counts, "size": [r.size, r.size]},
                    "area": area,
                    "iscrowd": 0,
                    "image_id": r.image_id,
                    "bbox": bbox,
                    "category_id": cat,
                    "id": ann_id,
                }
            )
    cats = [{k: c[k] for k in ("supercategory", "color", "id", "name")} for c in categories()]
    doc = {
        "info": _INFO,
        "licenses": _LICENSES,
        "images": [_image_entry(r) for r in results],
        "annotations": annotations,
        "categories": cats,
    }
    return doc, lookup


def _captions_json(results: Sequence[ImageResult], split: str, caption_ids: _Counter) -> dict[str, Any]:
    annotations = [
        {"image_id": r.image_id, "id": caption_ids.next(), "caption": c} for r in results for c in r.captions
    ]
    return {
        "info": _INFO,
        "licenses": _LICENSES,
        "images": [_image_entry(r) for r in results],
        "annotations": annotations,
    }


def _tokens(text: str) -> list[str]:
    """Lower-case word tokens without punctuation, as in the Karpathy and RefCOCO files."""
    return [w for w in "".join(c if c.isalnum() else " " for c in text.lower()).split() if w]


def _karpathy_json(results_by_split: dict[str, list[ImageResult]]) -> dict[str, Any]:
    images = []
    img_ids, sent_ids = _Counter(), _Counter()
    for split, results in results_by_split.items():
        for r in results:
            imgid = img_ids.next()
            sentences = [
                {"tokens": _tokens(c), "raw": c, "imgid": imgid, "sentid": sent_ids.next()}
                for c in r.captions
            ]
            images.append(
                {
                    "filepath": split,
                    "sentids": [s["sentid"] for s in sentences],
                    "filename": f"{r.image_id:012d}.jpg",
                    "imgid": imgid,
                    "split": split,
                    "sentences": sentences,
                    "cocoid": r.image_id,
                }
            )
    return {"images": images, "dataset": "coco"}


def _ref_record(
    ref_id: int,
    image_id: int,
    ann_id: int,
    category_id: int,
    split: str,
    texts: Sequence[str],
    sent_ids: _Counter,
) -> dict[str, Any]:
    """One ref in the key order of the official RefCOCO pickle."""
    sentences = [{"raw": t, "sent": t, "tokens": _tokens(t), "sent_id": sent_ids.next()} for t in texts]
    return {
        "ref_id": ref_id,
        "image_id": image_id,
        "ann_id": ann_id,
        "category_id": category_id,
        "split": split,
        "file_name": f"{image_id:012d}.jpg",
        "sentences": sentences,
        "sent_ids": [s["sent_id"] for s in sentences],
    }


def _pick_reference(
    rng: np.random.Generator,
    pools: dict[str, dict[Any, list[tuple[int, int]]]],
    image_id: int,
    category_id: int,
    colour: str | None,
) -> dict[str, Any] | None:
    """Pick a segment of the same category (same colour if possible) in another image of the split."""
    for key, pool in (((category_id, colour), pools["colour"]), (category_id, pools["category"])):
        candidates = [c for c in pool.get(key, []) if c[0] != image_id]
        if candidates:
            other_image, other_segment = candidates[int(rng.integers(len(candidates)))]
            return {"image_id": other_image, "annotation_id": other_segment, "prob": 1.0}
    return None


def _entity_json(
    results: Sequence[ImageResult], split: str, seed: int, entity_ids: _Counter
) -> dict[str, Any]:
    """Build FIND-Bench COCO-Entity; references are drawn in image order from a split-level generator."""
    pools: dict[str, dict[Any, list[tuple[int, int]]]] = {"colour": {}, "category": {}}
    colour_of: dict[tuple[int, int], str] = {}
    for r in results:
        for sid, cat, thing_colour in r.things:
            pools["colour"].setdefault((cat, thing_colour), []).append((r.image_id, sid))
            pools["category"].setdefault(cat, []).append((r.image_id, sid))
            colour_of[(r.image_id, sid)] = thing_colour
    rng = np.random.default_rng(np.random.SeedSequence([seed, SPLIT_CODES[split], 2**31 - 1]))
    annotations = []
    for r in results:
        for sentence, phrases in r.entities:
            out_phrases = []
            for p in phrases:
                entry = {k: p[k] for k in ("phrase", "start_idx", "end_idx", "annotation_id", "category_id")}
                if p["want_reference"]:
                    colour = colour_of.get((r.image_id, p["annotation_id"]))
                    reference = _pick_reference(rng, pools, r.image_id, p["category_id"], colour)
                    if reference is not None:
                        entry["reference"] = reference
                out_phrases.append(entry)
            annotations.append(
                {"id": entity_ids.next(), "image_id": r.image_id, "sentence": sentence, "phrase": out_phrases}
            )
    return {"images": [_short_image_entry(r) for r in results], "annotations": annotations}


def _dump_json(path: Path, doc: Any) -> None:
    """Write JSON deterministically (insertion key order, ASCII, no floats that vary)."""
    path.write_text(json.dumps(doc), encoding="utf-8")


def write_annotation_files(
    out: Path, results_by_split: dict[str, list[ImageResult]], seed: int
) -> dict[str, SplitSummary]:
    """Write every annotation file; ids that span images are assigned here, in image order."""
    ann_dir = out / "annotations"
    ann_ids, caption_ids, entity_ids = _Counter(1), _Counter(1), _Counter(0)
    lookups: dict[str, dict[tuple[int, int], int]] = {}
    for split, results in results_by_split.items():
        _dump_json(ann_dir / f"panoptic_{split}.json", _panoptic_json(results, split))
        instances, lookups[split] = _instances_json(results, split, ann_ids)
        _dump_json(ann_dir / f"instances_{split}.json", instances)
        _dump_json(ann_dir / f"captions_{split}.json", _captions_json(results, split, caption_ids))
        _dump_json(ann_dir / f"entity_{split}.json", _entity_json(results, split, seed, entity_ids))
    _dump_json(ann_dir / "dataset_coco.json", _karpathy_json(results_by_split))

    ref_ids, sent_ids = _Counter(), _Counter()
    refs: dict[str, list[dict[str, Any]]] = {}
    for split, results in results_by_split.items():
        refs[split] = [
            _ref_record(
                ref_ids.next(), r.image_id, lookups[split][(r.image_id, sid)], cat, split, texts, sent_ids
            )
            for r in results
            for sid, cat, texts in r.refs
        ]
        _dump_json(ann_dir / f"refs_{split}.json", refs[split])
    # Pickle memoises strings by object identity, and whether two equal strings are one object depends
    # on where they were built (a worker or this process). Rebuilding the records from JSON text makes
    # the object graph, hence the pickle bytes, the same for any number of workers.
    canonical = json.loads(json.dumps([ref for split in results_by_split for ref in refs[split]]))
    with open(ann_dir / "refs(synth).p", "wb") as f:
        pickle.dump(canonical, f, protocol=2)
    # Absent refs continue the ref and sentence ids, so they never collide with present ones.
    absent_counts = {}
    for split, results in results_by_split.items():
        absent = [
            _ref_record(ref_ids.next(), r.image_id, -1, cat, split, texts, sent_ids)
            for r in results
            for cat, texts in r.absent
        ]
        absent_counts[split] = len(absent)
        _dump_json(ann_dir / f"refs_absent_{split}.json", absent)

    return {
        split: SplitSummary(
            images=len(results),
            segments=sum(len(r.segments) for r in results),
            things=sum(len(r.things) for r in results),
            captions=sum(len(r.captions) for r in results),
            refs=len(refs[split]),
            absent_refs=absent_counts[split],
            entity_sentences=sum(len(r.entities) for r in results),
        )
        for split, results in results_by_split.items()
    }
