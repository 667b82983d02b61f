"""Simulated clicks: the next click is put where the prediction is most wrong.

The rule of RITM (``isegm/inference/clicker.py``) and SEEM/FIND (``prepare_next_spaital_mask`` in
UX-Decoder/FIND ``modeling/architectures/find_model.py``): take the false negatives (object pixels
the prediction misses) and the false positives (background it covers), each padded with one row and
column of background so that the image border counts as a region border; the click goes to the
pixel farthest from its region's border (the maximum of the Euclidean distance transform), positive
when the false negatives hold the farther pixel, negative otherwise. Pixels clicked already are not
clicked again; among equally far pixels the first in row-major order wins, so the clicks of a given
prediction are always the same. The first click of an object (an empty prediction) is its
innermost pixel.

A click becomes a visual prompt as a small square of pixels (FIND dilates a click with a 3 x 3
kernel: radius 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Click:
    """One click at pixel (``row``, ``col``); ``positive``: on the object (else on the background)."""

    row: int
    col: int
    positive: bool


def _inner_distance(region: np.ndarray) -> np.ndarray:
    """float64[H,W]: each pixel's distance to the nearest pixel outside ``region`` or outside the image."""
    padded = np.pad(region, 1, mode="constant", constant_values=False)
    return np.asarray(ndimage.distance_transform_edt(padded))[1:-1, 1:-1]


def next_click(
    prediction: np.ndarray,
    truth: np.ndarray,
    clicked: np.ndarray | None = None,
    ignore: np.ndarray | None = None,
) -> Click | None:
    """The click that corrects ``prediction`` most, or None when nothing is left to correct.

    Args:
        prediction: bool[H,W], the current predicted mask (all False before the first click).
        truth: bool[H,W], the object's mask.
        clicked: bool[H,W], pixels clicked already (never clicked again); None = none.
        ignore: bool[H,W], pixels that are neither object nor background (void); None = none.

    Returns:
        The next :class:`Click`, or None when no unclicked pixel is wrong.

    """
    prediction, truth = np.asarray(prediction, dtype=bool), np.asarray(truth, dtype=bool)
    if prediction.shape != truth.shape or truth.ndim != 2:
        raise ValueError(f"prediction {list(prediction.shape)} and truth {list(truth.shape)} must be [H,W]")
    counted = np.ones_like(truth) if ignore is None else ~np.asarray(ignore, dtype=bool)
    missed = truth & ~prediction & counted
    spilled = ~truth & prediction & counted
    allowed = np.ones_like(truth) if clicked is None else ~np.asarray(clicked, dtype=bool)
    missed_distance = _inner_distance(missed) * allowed
    spilled_distance = _inner_distance(spilled) * allowed
    farthest_missed, farthest_spilled = float(missed_distance.max()), float(spilled_distance.max())
    if max(farthest_missed, farthest_spilled) <= 0:
        return None
    positive = farthest_missed > farthest_spilled
    distance = missed_distance if positive else spilled_distance
    row, col = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return Click(int(row), int(col), positive)


def click_masks(
    clicks: Sequence[Click], shape: tuple[int, int], radius: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """(positive, negative) bool[H,W]: each click a square of side ``2 radius + 1``, cut to the image."""
    height, width = shape
    positive = np.zeros((height, width), dtype=bool)
    negative = np.zeros((height, width), dtype=bool)
    for click in clicks:
        if not (0 <= click.row < height and 0 <= click.col < width):
            raise ValueError(
                f"click at (row {click.row}, col {click.col}) outside the {height}x{width} image"
            )
        target = positive if click.positive else negative
        rows = slice(max(click.row - radius, 0), click.row + radius + 1)
        cols = slice(max(click.col - radius, 0), click.col + radius + 1)
        target[rows, cols] = True
    return positive, negative
