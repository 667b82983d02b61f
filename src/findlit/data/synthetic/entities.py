"""Entity sentences (FIND-Bench COCO-Entity): sentences whose phrases point at panoptic segments.

Every phrase records its exact character span, its segment and category, and whether it should
get a reference to the same kind of segment in another image (resolved when the files are written).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from findlit.data.synthetic.describe import (
    capitalise,
    choose,
    indefinite,
    unique_descriptions,
    word_description,
)
from findlit.data.synthetic.language import LanguageContext, verb_form
from findlit.data.synthetic.scene import Scene


@dataclass(frozen=True)
class _EntityPiece:
    """A phrase of an entity sentence before it is placed: text, segment and category."""

    text: str
    segment_id: int
    category_id: int
    want_reference: bool


class SpanBuilder:
    """Builds a sentence piece by piece and records the character span of every phrase."""

    def __init__(self) -> None:
        self.text = ""
        self.phrases: list[dict[str, Any]] = []

    def add(self, text: str) -> None:
        """Append plain text (not a phrase)."""
        self.text += text

    def phrase(self, piece: _EntityPiece) -> None:
        """Append a phrase and record its span (capitalised when it opens the sentence)."""
        text = piece.text if self.text else capitalise(piece.text)
        start = len(self.text)
        self.text += text
        self.phrases.append(
            {
                "phrase": text,
                "start_idx": start,
                "end_idx": len(self.text),
                "annotation_id": piece.segment_id,
                "category_id": piece.category_id,
                "want_reference": piece.want_reference,
            }
        )


def _add_list(builder: SpanBuilder, pieces: Sequence[_EntityPiece]) -> None:
    """Append "A", "A and B" or "A, B and C", each piece a phrase."""
    for i, piece in enumerate(pieces):
        if i > 0:
            builder.add(" and " if i == len(pieces) - 1 else ", ")
        builder.phrase(piece)


def _entity_sentence(
    rng: np.random.Generator,
    things: Sequence[_EntityPiece],
    grounds: Sequence[_EntityPiece],
    sky: _EntityPiece | None,
) -> SpanBuilder:
    """One sentence naming ``things`` (1-3), optionally a ground and the sky, with exact spans."""
    b = SpanBuilder()
    verb = verb_form(len(things), choose(rng, ("lie", "sit", "rest")))
    ground = grounds[0] if grounds else None
    pattern = int(rng.integers(3))
    if pattern == 0 and sky is not None:
        b.add("Under ")
        b.phrase(sky)
        b.add(", ")
        _add_list(b, things)
        if ground is not None:
            b.add(f" {verb} on ")
            b.phrase(ground)
        else:
            b.add(" " + verb_form(len(things), "float"))
    elif pattern == 1 and ground is not None:
        b.phrase(ground)
        if len(grounds) > 1:
            b.add(" and ")
            b.phrase(grounds[1])
            b.add(" surround ")
        else:
            b.add(" surrounds ")
        _add_list(b, things)
    else:
        _add_list(b, things)
        if ground is not None:
            b.add(f" {verb} on ")
            b.phrase(ground)
        else:
            b.add(" " + verb_form(len(things), "float"))
        if sky is not None and rng.random() < 0.6:
            b.add(" below ")
            b.phrase(sky)
    b.add(".")
    return b


def entity_sentences(ctx: LanguageContext, scene: Scene, rng: np.random.Generator) -> list[SpanBuilder]:
    """One or two entity sentences naming uniquely described things and the named stuff."""
    pieces: list[_EntityPiece] = []
    for k, t in enumerate(ctx.things):
        descs = unique_descriptions(ctx.things, k)
        if descs:
            # "a red circle" is fine for a unique object, but a position reads better with "the".
            definite = descs[0].hpos is not None or descs[0].vpos is not None or rng.random() < 0.7
            text = (
                word_description(rng, descs[0])
                if definite
                else indefinite(word_description(rng, descs[0], article=""))
            )
            pieces.append(_EntityPiece(text, t.segment_id, t.category_id, bool(rng.random() < 1 / 3)))
    stuff_by_name = {s.name: s for s in scene.stuff}
    grounds = [
        _EntityPiece(f"the {g}", stuff_by_name[g].segment_id, stuff_by_name[g].category_id, False)
        for g in ctx.grounds
    ]
    sky = None
    if ctx.has_sky:
        s = stuff_by_name["sky"]
        sky = _EntityPiece("the sky", s.segment_id, s.category_id, False)
    if not pieces:
        return []
    order = [pieces[int(i)] for i in rng.permutation(len(pieces))]
    first = int(rng.integers(1, 4))
    sentences = [_entity_sentence(rng, order[:first], grounds, sky)]
    # A second sentence names the things the first one left out (and the grounds the other way round).
    rest = order[first:]
    if rest and rng.random() < 0.6:
        sentences.append(_entity_sentence(rng, rest[: int(rng.integers(1, 3))], grounds[::-1], sky))
    return sentences
