"""Simulated clicks on hand-built error maps: where RITM's rule puts them, and their masks."""

from __future__ import annotations

import numpy as np
import pytest

from findlit.interactive.clicks import Click, click_masks, next_click


def rectangle(shape: tuple[int, int], top: int, left: int, height: int, width: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + height, left : left + width] = True
    return mask


def test_first_click_is_the_objects_innermost_pixel() -> None:
    truth = rectangle((20, 30), 4, 6, 9, 9)  # rows 4..12, cols 6..14: centre (8, 10)
    click = next_click(np.zeros_like(truth), truth)
    assert click == Click(8, 10, True)


def test_positive_click_in_the_larger_missed_region() -> None:
    truth = rectangle((40, 40), 0, 0, 40, 40) & ~rectangle((40, 40), 0, 0, 10, 40)  # rows 10..39
    prediction = rectangle((40, 40), 10, 0, 10, 40)  # found rows 10..19; missed rows 20..39 (thick)
    prediction |= rectangle((40, 40), 0, 0, 3, 40)  # a thin spill over rows 0..2
    click = next_click(prediction, truth)
    assert click is not None and click.positive and 20 <= click.row <= 39


def test_negative_click_when_the_spill_is_thicker_than_the_miss() -> None:
    truth = rectangle((40, 40), 10, 10, 20, 20)
    prediction = truth.copy()
    prediction[10, 10:30] = False  # a one-pixel miss
    prediction |= rectangle((40, 40), 30, 0, 10, 40)  # a thick spill below the object
    click = next_click(prediction, truth)
    assert click is not None and not click.positive and prediction[click.row, click.col]
    assert not truth[click.row, click.col]


def test_the_image_border_counts_as_a_region_border() -> None:
    truth = rectangle((10, 10), 0, 0, 10, 10)  # the whole image
    click = next_click(np.zeros_like(truth), truth)
    assert click is not None and 4 <= click.row <= 5 and 4 <= click.col <= 5


def test_clicked_pixels_are_not_clicked_again_and_a_perfect_mask_needs_none() -> None:
    truth = rectangle((20, 20), 5, 5, 9, 9)
    first = next_click(np.zeros_like(truth), truth)
    assert first is not None
    clicked = np.zeros_like(truth)
    clicked[first.row, first.col] = True
    second = next_click(np.zeros_like(truth), truth, clicked=clicked)
    assert second is not None and (second.row, second.col) != (first.row, first.col)
    assert next_click(truth, truth) is None


def test_void_pixels_are_neither_missed_nor_spilled() -> None:
    truth = rectangle((20, 20), 0, 0, 10, 20)
    prediction = truth | rectangle((20, 20), 10, 0, 10, 20)  # spills over the lower half
    assert next_click(prediction, truth, ignore=rectangle((20, 20), 10, 0, 10, 20)) is None


def test_click_masks_are_squares_cut_to_the_image() -> None:
    positive, negative = click_masks([Click(0, 0, True), Click(5, 5, False)], (8, 8), radius=1)
    assert positive.sum() == 4 and positive[:2, :2].all()
    assert negative.sum() == 9 and negative[4:7, 4:7].all()
    with pytest.raises(ValueError, match="outside the 8x8 image"):
        click_masks([Click(8, 0, True)], (8, 8))
