"""Visual entities: which phrases become visual prompts (seeded per phrase) and their strokes."""

from __future__ import annotations

import numpy as np

from findlit.interactive.entities import draw_entity_strokes
from findlit.interactive.strokes import MIN_AREA, StrokeSampling


def square(top: int, left: int, side: int, size: int = 48) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


SEGMENTS = [square(2 + 3 * (k % 4), 2 + 4 * (k // 4), 12) for k in range(40)]


def visual_flags(strokes: list[np.ndarray | None]) -> list[bool]:
    return [stroke is not None for stroke in strokes]


def test_the_same_phrases_and_strokes_for_the_same_seed() -> None:
    first = draw_entity_strokes(SEGMENTS, seed=5, probability=0.5)
    again = draw_entity_strokes(SEGMENTS, seed=5, probability=0.5)
    other = draw_entity_strokes(SEGMENTS, seed=6, probability=0.5)
    assert visual_flags(first) == visual_flags(again)
    for a, b in zip(first, again, strict=True):
        assert (a is None and b is None) or np.array_equal(a, b)
    assert visual_flags(first) != visual_flags(other)
    # about half of 40 phrases (binomial: 20 +- 3.2, so 8..32 is out of reach only by a 4-sigma fluke)
    assert 8 <= sum(visual_flags(first)) <= 32


def test_probability_zero_and_one() -> None:
    assert visual_flags(draw_entity_strokes(SEGMENTS, seed=1, probability=0.0)) == [False] * 40
    assert visual_flags(draw_entity_strokes(SEGMENTS, seed=1, probability=1.0)) == [True] * 40


def test_a_phrase_draw_does_not_depend_on_the_others() -> None:
    """Phrase k's coin and stroke come from (seed, k): removing phrase 0's segment changes only phrase 0."""
    full = draw_entity_strokes(SEGMENTS[:6], seed=9, probability=1.0)
    without_first = draw_entity_strokes([None, *SEGMENTS[1:6]], seed=9, probability=1.0)
    assert without_first[0] is None
    for a, b in zip(full[1:], without_first[1:], strict=True):
        assert a is not None and b is not None and np.array_equal(a, b)


def test_strokes_lie_on_their_segment_and_tiny_segments_stay_text() -> None:
    tiny = np.zeros((48, 48), dtype=bool)
    tiny[0, : MIN_AREA - 1] = True
    sampling = StrokeSampling(kinds=("points", "scribble", "polygon"))
    strokes = draw_entity_strokes([*SEGMENTS[:10], tiny], seed=2, probability=1.0, sampling=sampling)
    assert strokes[-1] is None  # fewer than MIN_AREA pixels: no stroke (FIND's rule)
    for segment, stroke in zip(SEGMENTS[:10], strokes[:10], strict=True):
        assert stroke is not None and stroke.any() and not (stroke & ~segment).any()
