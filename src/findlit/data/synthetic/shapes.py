"""Geometry of the thing shapes: inside tests in normalised local coordinates (radius 1, v down)."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray


def _regular_polygon(u: NDArray[np.float32], v: NDArray[np.float32], sides: int) -> NDArray[np.bool_]:
    """Inside a regular polygon of circumradius 1 with a vertex pointing up (v < 0 is up)."""
    inside = np.ones(u.shape, dtype=bool)
    apothem = math.cos(math.pi / sides)
    for k in range(sides):
        normal = -math.pi / 2 + math.pi / sides + 2 * math.pi * k / sides
        inside &= u * math.cos(normal) + v * math.sin(normal) <= apothem
    return inside


def _star(u: NDArray[np.float32], v: NDArray[np.float32], inner: float = 0.45) -> NDArray[np.bool_]:
    """Inside a five-pointed star of outer radius 1 with a point up."""
    sector = 2 * math.pi / 5
    angle = np.mod(np.arctan2(v, u) + math.pi / 2, sector)
    folded = np.minimum(angle, sector - angle)  # symmetry: every point maps into [0, pi/5]
    rho = np.hypot(u, v)
    px, py = rho * np.cos(folded), rho * np.sin(folded)
    qx, qy = inner * math.cos(sector / 2), inner * math.sin(sector / 2)
    # Inside iff on the origin's side of the edge from the tip (1, 0) to the inner vertex q.
    return (qx - 1.0) * py - qy * (px - 1.0) >= 0


def shape_mask(shape: str, u: NDArray[np.float32], v: NDArray[np.float32]) -> NDArray[np.bool_]:
    """Inside test of ``shape`` in normalised local coordinates (radius 1, v pointing down).

    u, v: float32[h, w]. Returns bool[h, w].
    """
    r2 = u * u + v * v
    if shape == "circle":
        return r2 <= 0.92
    if shape == "ring":
        return (r2 <= 1.0) & (r2 >= 0.52**2)
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.78
    if shape == "diamond":
        return np.abs(u) / 0.72 + np.abs(v) <= 1.0
    if shape == "triangle":
        # Scaled and shifted so that the triangle's box is centred and about as tall as the others'.
        return _regular_polygon(u / np.float32(1.1), (v - np.float32(0.3)) / np.float32(1.1), 3)
    if shape == "hexagon":
        return _regular_polygon(u, v, 6)
    if shape == "star":
        return _star(u, v)
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))
    if shape == "heart":
        x, y = u * 1.2, -v * 1.2 + 0.12
        return (x * x + y * y - 1.0) ** 3 - x * x * y**3 <= 0
    if shape == "crescent":
        return (r2 <= 1.0) & ((u - 0.45) ** 2 + (v + 0.15) ** 2 > 0.8**2)
    raise ValueError(f"unknown shape {shape!r}")
