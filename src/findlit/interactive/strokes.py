"""Strokes drawn from an object's mask: the visual prompts of interactive segmentation's training.

FIND draws one stroke per prompted object (UX-Decoder/FIND ``datasets/visual_sampler/``:
``sampler.py`` picks a kind per object, ``point.py``, ``polygon.py``, ``scribble.py``,
``circle.py`` draw it; ``configs/find/focalt_unicl_lang.yaml`` ``STROKE_SAMPLER``):

- **points**: 1 to ``NUM_POINTS`` = 20 pixels of the mask, drawn without replacement, not dilated;
- **polygon**: 1 to ``MAX_POINTS`` = 9 pixels of the mask joined into a closed outline (only the
  outline is drawn; FIND smooths it with Bezier segments, findlit joins the points, sorted by angle
  around their mean, with straight lines);
- **scribble**: 1 to ``NUM_STROKES`` = 5 random-walk strokes started at pixels of the mask;
- and a mask smaller than 10 pixels gives no stroke at all (the prompt is then dropped).

findlit adds **box** (the mask's bounding box, filled, as SAM and SEEM take boxes) and **mask** (the
mask itself), and leaves out FIND's circle. Its scribbles are scaled to the object (step and brush
proportional to the square root of its area: FIND's fixed pixel sizes are for 1024-pixel images, on
findlit's 128-pixel demo images they would leave most objects) and kept inside the mask.

Every draw takes a NumPy ``Generator``, so a sample's stroke is fixed by its seed.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

STROKE_KINDS: tuple[str, ...] = ("points", "box", "scribble", "polygon", "mask")
"""Every stroke kind :func:`draw_stroke` draws."""

MIN_AREA = 10
"""FIND draws nothing on a mask of fewer pixels (``if mask.sum() < 10``)."""


@dataclass(frozen=True)
class StrokeSampling:
    """Which strokes a training prompt gets, and their sizes.

    Args:
        kinds: the kinds drawn from (each of :data:`STROKE_KINDS`).
        weights: relative frequency of each kind; empty = all alike (FIND: 0.25 each of its four).
        max_points: most pixels of a points stroke (FIND's ``POINT.NUM_POINTS``: 20).
        max_polygon_points: most corners of a polygon (FIND's ``POLYGON.MAX_POINTS``: 9).
        max_scribbles: most strokes of a scribble (FIND's ``SCRIBBLE.NUM_STROKES``: 5).

    """

    kinds: tuple[str, ...] = ("points", "polygon", "scribble", "box")
    weights: tuple[float, ...] = ()
    max_points: int = 20
    max_polygon_points: int = 9
    max_scribbles: int = 5

    def __post_init__(self) -> None:
        unknown = [kind for kind in self.kinds if kind not in STROKE_KINDS]
        if not self.kinds or unknown:
            raise ValueError(f"stroke kinds must be some of {list(STROKE_KINDS)}, got {list(self.kinds)}")
        if self.weights and (len(self.weights) != len(self.kinds) or min(self.weights) < 0):
            raise ValueError(f"one non-negative weight per stroke kind, got {list(self.weights)}")
        if self.weights and sum(self.weights) <= 0:
            raise ValueError("the stroke weights sum to zero")
        if min(self.max_points, self.max_polygon_points, self.max_scribbles) < 1:
            raise ValueError("max_points, max_polygon_points and max_scribbles must be at least 1")

    def choose(self, rng: np.random.Generator) -> str:
        """One kind, by ``weights``."""
        weights = np.asarray(self.weights or [1.0] * len(self.kinds), dtype=np.float64)
        return self.kinds[int(rng.choice(len(self.kinds), p=weights / weights.sum()))]


def draw_stroke(
    mask: np.ndarray, kind: str, rng: np.random.Generator, sampling: StrokeSampling | None = None
) -> np.ndarray:
    """A stroke of ``kind`` drawn on the object ``mask``.

    Args:
        mask: bool[H,W], the object.
        kind: one of :data:`STROKE_KINDS`.
        rng: the draw's generator.
        sampling: the sizes (counts of points, corners, strokes); None = FIND's.

    Returns:
        bool[H,W]; empty when the mask has fewer than :data:`MIN_AREA` pixels.

    """
    sampling = sampling or StrokeSampling()
    if kind not in STROKE_KINDS:
        raise ValueError(f"unknown stroke kind {kind!r}; known: {list(STROKE_KINDS)}")
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be bool[H,W], got shape {list(mask.shape)}")
    area = int(mask.sum())
    if area < MIN_AREA:
        return np.zeros_like(mask)
    if kind == "mask":
        return mask.copy()
    if kind == "box":
        return _box(mask)
    if kind == "points":
        count = int(rng.integers(1, min(sampling.max_points, area) + 1))
        return _pixels(mask, _random_pixels(mask, count, rng))
    if kind == "polygon":
        count = int(rng.integers(1, min(sampling.max_polygon_points, area) + 1))
        return _polygon_outline(mask.shape, _random_pixels(mask, count, rng))
    count = int(rng.integers(1, min(sampling.max_scribbles, area) + 1))
    return _scribble(mask, count, rng)


def _random_pixels(mask: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """int64[count,2] (row, col) of distinct pixels of ``mask``, in the order drawn."""
    rows, cols = np.nonzero(mask)
    chosen = rng.choice(rows.size, size=min(count, rows.size), replace=False)
    return np.stack([rows[chosen], cols[chosen]], axis=1).astype(np.int64)


def _pixels(mask: np.ndarray, points: np.ndarray) -> np.ndarray:
    canvas = np.zeros(mask.shape, dtype=bool)
    canvas[points[:, 0], points[:, 1]] = True
    return canvas


def _box(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    canvas = np.zeros(mask.shape, dtype=bool)
    canvas[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = True
    return canvas


def line_pixels(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """int64[n,2] (row, col) of the pixels of the segment from ``start`` to ``end`` (both included).

    Steps of at most one pixel along the longer axis, rounded: an 8-connected line.
    """
    start, end = np.asarray(start, dtype=np.float64), np.asarray(end, dtype=np.float64)
    steps = int(np.ceil(np.abs(end - start).max())) + 1
    t = np.linspace(0.0, 1.0, steps)[:, None]
    return np.rint(start + t * (end - start)).astype(np.int64)


def _draw_path(shape: tuple[int, ...], vertices: Sequence[np.ndarray], closed: bool) -> np.ndarray:
    """bool[H,W] of the polyline through ``vertices`` (row, col), clipped to the image."""
    canvas = np.zeros(shape[:2], dtype=bool)
    corners = list(vertices) + ([vertices[0]] if closed and len(vertices) > 2 else [])
    pieces = [line_pixels(a, b) for a, b in itertools.pairwise(corners)]
    pixels = np.concatenate(pieces) if pieces else np.asarray(vertices, dtype=np.int64).reshape(-1, 2)
    inside = (pixels[:, 0] >= 0) & (pixels[:, 0] < shape[0]) & (pixels[:, 1] >= 0) & (pixels[:, 1] < shape[1])
    canvas[pixels[inside, 0], pixels[inside, 1]] = True
    return canvas


def _polygon_outline(shape: tuple[int, ...], corners: np.ndarray) -> np.ndarray:
    """The closed outline through ``corners`` int64[n,2], sorted by angle around their mean."""
    centre = corners.mean(axis=0)
    angle = np.arctan2(corners[:, 0] - centre[0], corners[:, 1] - centre[1])
    ordered = corners[np.argsort(angle, kind="stable")]
    return _draw_path(shape, list(ordered), closed=True)


def _scribble(mask: np.ndarray, strokes: int, rng: np.random.Generator) -> np.ndarray:
    """``strokes`` random walks from pixels of ``mask``, brushed, kept inside the mask.

    A walk has 6 to 22 vertices (FIND's ``rand_curve_small`` preset), a step of 0.15 x sqrt(area)
    pixels and a heading that turns by up to 0.6 rad per step; the brush radius is 0.04 x sqrt(area)
    (at least 0: one pixel wide).
    """
    size = float(np.sqrt(mask.sum()))
    step = max(1.0, 0.15 * size)
    radius = round(0.04 * size)
    canvas = np.zeros(mask.shape, dtype=bool)
    for start in _random_pixels(mask, strokes, rng):
        heading = rng.uniform(0.0, 2 * np.pi)
        vertices = [start.astype(np.float64)]
        for _ in range(int(rng.integers(6, 23)) - 1):
            heading += rng.uniform(-0.6, 0.6)
            vertices.append(vertices[-1] + step * np.array([np.sin(heading), np.cos(heading)]))
        canvas |= _draw_path(mask.shape, vertices, closed=False)
    if radius > 0:
        canvas = ndimage.binary_dilation(canvas, structure=_disk(radius))
    # the walk's first pixel is in the mask, so the stroke is never empty
    return canvas & mask


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return np.asarray(yy**2 + xx**2 <= radius**2)
