"""One image: render it, write its JPEG and panoptic PNG, and produce its per-image annotations.

:func:`build_image` is what the worker processes run; it lives at module level so that spawned
workers can import it, and it returns plain data that is cheap to send back. Ids that span images
are not assigned here (see :mod:`findlit.data.synthetic.annotation_files`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from findlit.data.synthetic.describe import unique_descriptions, word_description
from findlit.data.synthetic.entities import entity_sentences
from findlit.data.synthetic.language import absent_description, language_context, make_captions, ref_sentences
from findlit.data.synthetic.scene import Scene, render, scene_rng
from findlit.data.synthetic.vocabulary import THING_CATEGORY_IDS, image_id_for


@dataclass(frozen=True)
class ImageJob:
    """One image to make: the output folder, its split and index, its size and the seed."""

    out: str
    split: str
    index: int
    size: int
    seed: int


@dataclass
class ImageResult:
    """What one image contributes to the annotation files (plain data, cheap to send between processes).

    ``segments``: (segment_id, category_id, area, bbox [x, y, w, h], rle counts) per segment.
    ``things``: (segment_id, category_id, colour) per thing, for entity references.
    ``refs``: (segment_id, category_id, sentences); ``absent``: (category_id, sentences).
    ``entities``: (sentence, phrases) with a ``want_reference`` flag per phrase.
    """

    split: str
    index: int
    image_id: int
    size: int
    segments: list[tuple[int, int, int, list[int], str]]
    things: list[tuple[int, int, str]]
    captions: list[str]
    refs: list[tuple[int, int, list[str]]]
    absent: list[tuple[int, list[str]]]
    entities: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)


def _encode_segments(scene: Scene) -> list[tuple[int, int, int, list[int], str]]:
    """RLE, area and bbox of every segment of ``scene`` (pycocotools on the Fortran-ordered masks)."""
    ids, masks = scene.masks()
    stacked = np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8))
    rles = mask_utils.encode(stacked)
    areas = mask_utils.area(rles)
    boxes = mask_utils.toBbox(rles)
    out = []
    for (sid, cat), rle, area, box in zip(scene.segments(), rles, areas, boxes, strict=True):
        out.append((sid, cat, int(area), [round(float(x)) for x in box], rle["counts"].decode("ascii")))
    assert [s[0] for s in out] == [int(i) for i in ids]
    return out


def _write_pixels(job: ImageJob, image_id: int, scene: Scene) -> None:
    """Write the JPEG and the panoptic PNG (id = R + 256 G + 256^2 B)."""
    name = f"{image_id:012d}"
    Image.fromarray(scene.image, mode="RGB").save(Path(job.out, job.split, name + ".jpg"), quality=95)
    ids = scene.segment_ids
    rgb = np.stack([ids % 256, (ids // 256) % 256, ids // 65536], axis=-1).astype(np.uint8)
    Image.fromarray(rgb, mode="RGB").save(Path(job.out, f"panoptic_{job.split}", name + ".png"))


def build_image(job: ImageJob) -> ImageResult:
    """Render one image, write its pixels and return its annotations (runs in a worker)."""
    rng = scene_rng(job.seed, job.split, job.index)
    scene = render(rng, job.size)
    image_id = image_id_for(job.split, job.index)
    _write_pixels(job, image_id, scene)
    ctx = language_context(scene)

    captions = make_captions(ctx, rng)
    refs: list[tuple[int, int, list[str]]] = []
    for k, t in enumerate(scene.things):
        descs = unique_descriptions(scene.things, k)
        if descs:
            refs.append((t.segment_id, t.category_id, ref_sentences(rng, descs)))
    absent: list[tuple[int, list[str]]] = []
    missing = absent_description(rng, scene.things)
    if missing is not None:
        sentences = list(
            dict.fromkeys(word_description(rng, missing) for _ in range(int(rng.integers(1, 3))))
        )
        absent.append((THING_CATEGORY_IDS[missing.shape], sentences))
    entities = [(b.text, b.phrases) for b in entity_sentences(ctx, scene, rng)]
    return ImageResult(
        split=job.split,
        index=job.index,
        image_id=image_id,
        size=job.size,
        segments=_encode_segments(scene),
        things=[(t.segment_id, t.category_id, t.colour) for t in scene.things],
        captions=captions,
        refs=refs,
        absent=absent,
        entities=entities,
    )
