"""Rendering of one scene: stuff regions under wavy boundaries, things drawn on top, occlusion resolved.

A scene is drawn from its own generator (seeded by seed, split and index); the visible things and
stuff regions, with the attributes the language uses, come with the RGB image and the panoptic map.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from findlit.data.synthetic.shapes import shape_mask
from findlit.data.synthetic.vocabulary import (
    COLOUR_NAMES,
    COLOURS,
    GROUND_NAMES,
    SHAPES,
    SPLIT_CODES,
    STUFF_CATEGORY_IDS,
    STUFF_COLOURS,
    THING_CATEGORY_IDS,
)

# Radius of a thing as a fraction of the image side, per size class: the classes do not overlap
# (areas differ by a factor of at least (0.12 / 0.07)^2 ~ 2.9).
_RADIUS_FRACTION: dict[str, tuple[float, float]] = {"small": (0.05, 0.07), "large": (0.12, 0.16)}

# A thing is kept only if this fraction of its drawn pixels stays visible (else its shape is lost).
_MIN_VISIBLE_FRACTION = 0.5
# ... and if it keeps at least this fraction of the image (tiny slivers are not objects).
_MIN_VISIBLE_AREA = 0.0015


@dataclass(frozen=True)
class Thing:
    """One visible thing of a scene with the attributes the language uses.

    ``hpos`` is "left" / "center" / "right" and ``vpos`` "top" / "middle" / "bottom", from the
    centroid of the visible pixels (thirds of the image; symmetric, so a horizontal flip swaps
    exactly "left" and "right").
    """

    shape: str
    colour: str
    size: str
    hpos: str
    vpos: str
    segment_id: int
    area: int

    @property
    def category_id(self) -> int:
        """The COCO category id of the thing's shape."""
        return THING_CATEGORY_IDS[self.shape]


@dataclass(frozen=True)
class StuffRegion:
    """One visible stuff region of a scene (one panoptic segment)."""

    name: str
    segment_id: int
    area: int

    @property
    def category_id(self) -> int:
        """The COCO category id of the stuff."""
        return STUFF_CATEGORY_IDS[self.name]


@dataclass(frozen=True)
class Scene:
    """A rendered scene.

    image: uint8[H, W, 3] RGB. segment_ids: int32[H, W], the panoptic id of every pixel (no void).
    ``things`` are in drawing order (later ones occlude earlier ones).
    """

    image: NDArray[np.uint8]
    segment_ids: NDArray[np.int32]
    things: tuple[Thing, ...]
    stuff: tuple[StuffRegion, ...]

    def segments(self) -> list[tuple[int, int]]:
        """``(segment_id, category_id)`` of every segment: things in drawing order, then stuff."""
        return [(t.segment_id, t.category_id) for t in self.things] + [
            (s.segment_id, s.category_id) for s in self.stuff
        ]

    def masks(self) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
        """Segment ids int64[N] and their masks bool[N, H, W], in the order of :meth:`segments`."""
        ids = np.array([sid for sid, _ in self.segments()], dtype=np.int64)
        return ids, self.segment_ids[None, :, :] == ids[:, None, None]


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Seed the generator of one image: independent of the others, so workers may run in any order."""
    return np.random.default_rng(np.random.SeedSequence([seed, SPLIT_CODES[split], index]))


@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Pixel-centre coordinates ``(yy, xx)``, each float32[S, S]."""
    axis = np.arange(size, dtype=np.float32) + np.float32(0.5)
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    return yy, xx


def _wavy_line(rng: np.random.Generator, size: int, base: float, amplitude: float) -> NDArray[np.float32]:
    """Draw a smooth boundary float32[S] in pixels: ``base`` (fraction of S) plus two random sines."""
    t = (np.arange(size, dtype=np.float32) + 0.5) / size
    f1, f2 = rng.uniform(0.5, 1.5), rng.uniform(2.0, 4.0)
    p1, p2 = rng.uniform(0.0, 2 * math.pi, size=2)
    a1, a2 = rng.uniform(0.4, 1.0) * amplitude, rng.uniform(0.0, 0.4) * amplitude
    line = base + a1 * np.sin(2 * math.pi * f1 * t + p1) + a2 * np.sin(2 * math.pi * f2 * t + p2)
    return (line * size).astype(np.float32)


def _stuff_layout(rng: np.random.Generator, size: int) -> tuple[list[str], NDArray[np.int16]]:
    """Stuff names and the index map int16[S, S] into them.

    Layouts: sky over one ground; sky over two stacked grounds; sky over a ground split left/right;
    two grounds seen from above (no sky). Bands keep at least ~15% of the image each.
    """
    yy, xx = _grid(size)
    kind = int(rng.choice(4, p=[0.4, 0.25, 0.2, 0.15]))
    g1, g2 = (str(g) for g in rng.permutation(np.array(GROUND_NAMES))[:2])
    if kind == 3:
        boundary = _wavy_line(rng, size, rng.uniform(0.35, 0.65), 0.05)
        return [g1, g2], (yy >= boundary[None, :]).astype(np.int16)
    horizon = _wavy_line(rng, size, rng.uniform(0.25, 0.42), 0.04)
    labels = (yy >= horizon[None, :]).astype(np.int16)
    if kind == 0:
        return ["sky", g1], labels
    if kind == 1:
        shore = _wavy_line(rng, size, rng.uniform(0.62, 0.75), 0.04)
        labels[yy >= shore[None, :]] = 2
        return ["sky", g1, g2], labels
    split_x = _wavy_line(rng, size, rng.uniform(0.35, 0.65), 0.06)
    labels[(labels == 1) & (xx >= split_x[:, None])] = 2
    return ["sky", g1, g2], labels


@dataclass(frozen=True)
class _Draw:
    """One drawn thing before occlusion: its crop box, its full mask inside the crop and shading."""

    shape: str
    colour: str
    size: str
    box: tuple[int, int, int, int]  # y0, y1, x0, x1
    mask: NDArray[np.bool_]  # bool[y1 - y0, x1 - x0]
    shade: NDArray[np.float32]  # float32[y1 - y0, x1 - x0], additive brightness


def _sample_things(rng: np.random.Generator, size: int) -> list[_Draw]:
    """Draw 1-6 things, fully inside the image.

    Shapes and colours repeat often, so that singling an object out needs colour, size or position.
    """
    yy, xx = _grid(size)
    draws: list[_Draw] = []
    for _ in range(int(rng.integers(1, 7))):
        shapes_so_far = [d.shape for d in draws]
        colours_so_far = [d.colour for d in draws]
        pick_shape = shapes_so_far if shapes_so_far and rng.random() < 0.4 else SHAPES
        pick_colour = colours_so_far if colours_so_far and rng.random() < 0.3 else COLOUR_NAMES
        shape = str(pick_shape[int(rng.integers(len(pick_shape)))])
        colour = str(pick_colour[int(rng.integers(len(pick_colour)))])
        size_class = "small" if rng.random() < 0.5 else "large"
        radius = rng.uniform(*_RADIUS_FRACTION[size_class]) * size
        cy, cx = rng.uniform(radius + 1, size - radius - 1, size=2)
        angle = math.radians(rng.uniform(-15.0, 15.0))
        y0, y1 = max(0, int(cy - radius) - 1), min(size, math.ceil(cy + radius) + 2)
        x0, x1 = max(0, int(cx - radius) - 1), min(size, math.ceil(cx + radius) + 2)
        dy, dx = yy[y0:y1, x0:x1] - np.float32(cy), xx[y0:y1, x0:x1] - np.float32(cx)
        cos, sin = np.float32(math.cos(angle)), np.float32(math.sin(angle))
        u = ((dx * cos + dy * sin) / np.float32(radius)).astype(np.float32)
        v = ((-dx * sin + dy * cos) / np.float32(radius)).astype(np.float32)
        # Lit from the top left: a gentle ramp makes things look solid rather than flat.
        shade = (np.float32(-14.0) * (u + v)).astype(np.float32)
        draws.append(_Draw(shape, colour, size_class, (y0, y1, x0, x1), shape_mask(shape, u, v), shade))
    return draws


def _paint(stuff_labels: NDArray[np.int16], draws: Sequence[_Draw]) -> NDArray[np.int16]:
    """Owner map int16[S, S]: stuff index, or ``n_stuff + k`` where thing k is the topmost."""
    owner = stuff_labels.copy()
    first = int(stuff_labels.max()) + 1
    for k, d in enumerate(draws):
        y0, y1, x0, x1 = d.box
        owner[y0:y1, x0:x1][d.mask] = first + k
    return owner


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> NDArray[np.float32]:
    """Low-frequency noise float32[S, S] with unit-ish amplitude: a cells x cells grid, bilinear."""
    coarse = rng.standard_normal((cells, cells), dtype=np.float32)
    up = Image.fromarray(coarse, mode="F").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(up, dtype=np.float32)


def _stuff_texture(rng: np.random.Generator, name: str, size: int) -> NDArray[np.float32]:
    """Additive brightness texture float32[S, S] typical of a stuff (ripples for water, ...)."""
    yy, xx = _grid(size)
    fine = rng.standard_normal((size, size), dtype=np.float32)
    if name == "sky":
        return 30.0 * yy / size + 4.0 * _smooth_noise(rng, size, 4) + 1.5 * fine
    if name == "grass":
        streaks = rng.standard_normal(size, dtype=np.float32)[None, :]
        return 9.0 * _smooth_noise(rng, size, 8) + 8.0 * streaks + 7.0 * fine
    if name == "water":
        phase = rng.uniform(0, 2 * math.pi)
        wobble = 2.0 * np.sin(xx * np.float32(12.0 / size) + np.float32(phase))
        ripples = np.sin(yy * np.float32(60.0 / size) + wobble)
        return 10.0 * ripples + 6.0 * _smooth_noise(rng, size, 6) + 3.0 * fine
    if name == "sand":
        return 8.0 * _smooth_noise(rng, size, 10) + 9.0 * fine
    if name == "dirt":
        return 16.0 * _smooth_noise(rng, size, 6) + 8.0 * fine
    if name == "gravel":
        return 6.0 * _smooth_noise(rng, size, 8) + 22.0 * fine
    raise ValueError(f"unknown stuff {name!r}")


def _position(cy: float, cx: float, size: int) -> tuple[str, str]:
    """(hpos, vpos) of a centroid by thirds of the image; symmetric under a horizontal flip."""
    u, v = cx / size, cy / size
    hpos = "left" if u < 1 / 3 else "right" if u > 2 / 3 else "center"
    vpos = "top" if v < 1 / 3 else "bottom" if v > 2 / 3 else "middle"
    return hpos, vpos


def _unique_ids(rng: np.random.Generator, count: int) -> list[int]:
    """``count`` distinct segment ids in [1, 2^24): random, so that all three PNG channels are used."""
    ids: list[int] = []
    while len(ids) < count:
        candidate = int(rng.integers(1, 2**24))
        if candidate not in ids:
            ids.append(candidate)
    return ids


def render(rng: np.random.Generator, size: int) -> Scene:
    """Draw one scene from ``rng`` (the language generation continues with the same ``rng``)."""
    names, stuff_labels = _stuff_layout(rng, size)
    n_stuff = len(names)
    draws = _sample_things(rng, size)
    owner = _paint(stuff_labels, draws)
    visible = np.bincount(owner.ravel(), minlength=n_stuff + len(draws))
    min_area = _MIN_VISIBLE_AREA * size * size
    kept = [
        d
        for k, d in enumerate(draws)
        if visible[n_stuff + k] >= max(min_area, _MIN_VISIBLE_FRACTION * int(d.mask.sum()))
    ]
    if len(kept) < len(draws):
        # Dropping a thing only uncovers pixels, so every kept thing stays above the thresholds.
        draws = kept
        owner = _paint(stuff_labels, draws)
        visible = np.bincount(owner.ravel(), minlength=n_stuff + len(draws))

    n_owner = n_stuff + len(draws)
    yy, xx = _grid(size)
    flat = owner.ravel()
    sum_y = np.bincount(flat, weights=yy.ravel(), minlength=n_owner)
    sum_x = np.bincount(flat, weights=xx.ravel(), minlength=n_owner)
    ids = _unique_ids(rng, n_owner)

    things: list[Thing] = []
    for k, d in enumerate(draws):
        o = n_stuff + k
        hpos, vpos = _position(sum_y[o] / visible[o], sum_x[o] / visible[o], size)
        things.append(Thing(d.shape, d.colour, d.size, hpos, vpos, ids[o], int(visible[o])))
    stuff = [StuffRegion(name, ids[i], int(visible[i])) for i, name in enumerate(names) if visible[i] > 0]

    image = _colour(rng, size, names, draws, owner)
    lut = np.array(ids, dtype=np.int32)
    return Scene(image, lut[owner], tuple(things), tuple(stuff))


def _colour(
    rng: np.random.Generator,
    size: int,
    names: Sequence[str],
    draws: Sequence[_Draw],
    owner: NDArray[np.int16],
) -> NDArray[np.uint8]:
    """Colour the scene: uint8[S, S, 3] from base colours per owner, stuff textures, shading and noise."""
    n_stuff = len(names)
    base = np.array(
        [STUFF_COLOURS[n] for n in names] + [COLOURS[d.colour] for d in draws], dtype=np.float32
    ).reshape(-1, 3)
    image = base[owner]
    texture = np.zeros((size, size), dtype=np.float32)
    for i, name in enumerate(names):
        region = owner == i
        texture[region] = _stuff_texture(rng, name, size)[region]
    for k, d in enumerate(draws):
        y0, y1, x0, x1 = d.box
        mine = owner[y0:y1, x0:x1] == n_stuff + k
        texture[y0:y1, x0:x1][mine] = d.shade[mine]
    image += texture[:, :, None]
    image += 3.0 * rng.standard_normal((size, size, 3), dtype=np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def render_scene(seed: int, split: str, index: int, size: int) -> Scene:
    """Re-render the ``index``-th scene of ``split`` exactly as :func:`generate` draws it."""
    return render(scene_rng(seed, split, index), size)
