"""Strokes drawn from masks: each kind lies where FIND's would, counts within FIND's bounds, seeded."""

from __future__ import annotations

import numpy as np
import pytest

from findlit.interactive.strokes import MIN_AREA, STROKE_KINDS, StrokeSampling, draw_stroke, line_pixels


def ellipse(height: int = 64, width: int = 80) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    return ((yy - 30) / 18.0) ** 2 + ((xx - 44) / 25.0) ** 2 <= 1


def box_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(mask)
    return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())


@pytest.mark.parametrize("kind", STROKE_KINDS)
def test_every_kind_is_non_empty_and_the_same_for_the_same_seed(kind: str) -> None:
    mask = ellipse()
    first = draw_stroke(mask, kind, np.random.default_rng(3))
    again = draw_stroke(mask, kind, np.random.default_rng(3))
    assert first.dtype == bool and first.shape == mask.shape and first.any()
    np.testing.assert_array_equal(first, again)


def test_points_are_pixels_of_the_mask_and_at_most_max_points() -> None:
    mask = ellipse()
    sampling = StrokeSampling(max_points=7)
    counts = set()
    for seed in range(40):
        stroke = draw_stroke(mask, "points", np.random.default_rng(seed), sampling)
        assert not (stroke & ~mask).any()
        counts.add(int(stroke.sum()))
    assert min(counts) >= 1 and max(counts) <= 7 and len(counts) > 3  # 1 to 7, drawn


def test_scribbles_stay_inside_the_mask() -> None:
    mask = ellipse()
    for seed in range(20):
        stroke = draw_stroke(mask, "scribble", np.random.default_rng(seed))
        assert stroke.any() and not (stroke & ~mask).any()


def test_a_polygon_is_an_outline_inside_the_masks_box() -> None:
    mask = ellipse()
    top, bottom, left, right = box_of(mask)
    for seed in range(20):
        stroke = draw_stroke(
            mask, "polygon", np.random.default_rng(seed), StrokeSampling(max_polygon_points=9)
        )
        rows, cols = np.nonzero(stroke)
        # corners are pixels of the mask, so the outline stays within its (convex) bounding box
        assert rows.min() >= top and rows.max() <= bottom and cols.min() >= left and cols.max() <= right
        assert stroke.sum() < mask.sum()  # an outline, not a filled shape


def test_box_is_the_filled_bounding_box_and_mask_the_mask() -> None:
    mask = ellipse()
    top, bottom, left, right = box_of(mask)
    box = draw_stroke(mask, "box", np.random.default_rng(0))
    assert (
        box.sum() == (bottom - top + 1) * (right - left + 1) and box[top : bottom + 1, left : right + 1].all()
    )
    np.testing.assert_array_equal(draw_stroke(mask, "mask", np.random.default_rng(0)), mask)


def test_a_mask_under_ten_pixels_gives_no_stroke() -> None:
    mask = np.zeros((20, 20), dtype=bool)
    mask[5, 5 : 5 + MIN_AREA - 1] = True
    for kind in STROKE_KINDS:
        assert not draw_stroke(mask, kind, np.random.default_rng(0)).any()


def test_line_pixels_are_eight_connected_and_include_both_ends() -> None:
    pixels = line_pixels(np.array([0, 0]), np.array([3, 9]))
    assert tuple(pixels[0]) == (0, 0) and tuple(pixels[-1]) == (3, 9)
    assert np.abs(np.diff(pixels, axis=0)).max() <= 1


def test_sampling_chooses_kinds_by_weight_and_refuses_unknown_ones() -> None:
    sampling = StrokeSampling(kinds=("points", "box"), weights=(1.0, 0.0))
    assert {sampling.choose(np.random.default_rng(s)) for s in range(20)} == {"points"}
    with pytest.raises(ValueError, match="stroke kinds"):
        StrokeSampling(kinds=("circle",))
    with pytest.raises(ValueError, match="unknown stroke kind"):
        draw_stroke(ellipse(), "lasso", np.random.default_rng(0))
