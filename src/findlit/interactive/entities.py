"""Which entity phrases of an interleaved prompt become visual prompts, and their strokes.

FIND-Bench's interleave (UX-Decoder/FIND ``datasets/dataset_mappers/
coco_panoptic_interleave_dataset_mapper.py``): each phrase of an entity sentence is replaced, with
probability ``VISUAL_PROB`` = 0.5 (``configs/find/focalt_unicl_lang.yaml``, ``INTERLEAVE``), by an
"[INTERACTIVE]" visual prompt whose stroke is drawn from a segment by the same sampler as the
interactive task's strokes (``shape_sampler``). FIND draws unseeded; findlit draws each phrase from a
generator of its own, fixed by the sample's seed and the phrase's index, so evaluation makes the
same phrases visual, with the same strokes, at every run, and a phrase's draw does not depend on the
other phrases of its image.

A phrase whose segment has fewer than :data:`~findlit.interactive.strokes.MIN_AREA` pixels (FIND's
"no stroke" rule) stays text: an empty stroke would prompt nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from findlit.interactive.strokes import MIN_AREA, StrokeSampling, draw_stroke

VISUAL_PLACEHOLDER = "[INTERACTIVE]"
"""The text FIND puts in the sentence in place of a visual entity's phrase."""


def phrase_rng(seed: int, phrase: int) -> np.random.Generator:
    """The generator of phrase ``phrase`` (its index among its image's phrases) of sample ``seed``."""
    return np.random.default_rng([int(seed), int(phrase)])


def draw_entity_strokes(
    segments: Sequence[np.ndarray | None],
    seed: int,
    probability: float,
    sampling: StrokeSampling | None = None,
) -> list[np.ndarray | None]:
    """For each phrase of an image, its stroke (it is a visual prompt) or None (it stays text).

    Args:
        segments: per phrase (its index k among the image's phrases), the bool[H,W] segment the
            stroke is drawn from: its own segment for grounding, its reference's segment (in the
            reference image's frame) for retrieval; None when it has none (it stays text).
        seed: the sample's seed.
        probability: chance that a phrase is visual (FIND's ``VISUAL_PROB``).
        sampling: the stroke kinds and sizes; None = FIND's (:class:`StrokeSampling`).

    Returns:
        per phrase, bool[H,W] of its segment's frame (a non-empty stroke) or None. Phrase k's coin
        and stroke come from :func:`phrase_rng` ``(seed, k)`` alone, the coin first, so the same
        phrases are visual whichever segments are given, and the same segment gets the same stroke.

    """
    sampling = sampling or StrokeSampling()
    strokes: list[np.ndarray | None] = []
    for k, segment in enumerate(segments):
        rng = phrase_rng(seed, k)
        visual = bool(rng.random() < probability)
        if not visual or segment is None or int(segment.sum()) < MIN_AREA:
            strokes.append(None)
            continue
        strokes.append(draw_stroke(segment, sampling.choose(rng), rng, sampling))
    return strokes
