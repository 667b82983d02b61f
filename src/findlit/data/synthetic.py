"""Generator of the embedded default dataset: coloured shapes on stuff, written in the real COCO formats.

Every image is a scene of *stuff* regions (sky, grass, water, ...) separated by wavy boundaries and
1-6 *things* (circle, star, ...) drawn on top, each with a colour, a size class and a position
derived from the centroid of its visible pixels. Later things occlude earlier ones; the panoptic map
is the resolved visible map, and a thing that stays mostly hidden is dropped from every file.

The language is generated from the same attributes, so a model must see colour, size and position
to solve the tasks: captions, referring expressions that single out one object with the fewest
attributes, referring expressions for objects that are *absent* (rejection), and entity sentences
whose phrases point at panoptic segments (some with a reference to the same kind of segment in
another image).

Output layout (``generate(out, ...)``)::

    <out>/.findlit-synth.json                    marker with the parameters (allows re-generation)
    <out>/{train,val}/<image_id:012d>.jpg        RGB JPEG, quality 95
    <out>/panoptic_{train,val}/<image_id:012d>.png   segment id = R + 256 G + 256^2 B, 0 = void
    <out>/annotations/panoptic_{split}.json      COCO panoptic
    <out>/annotations/instances_{split}.json     COCO instances, RLE masks of things and stuff
    <out>/annotations/captions_{split}.json      COCO captions, 5 per image
    <out>/annotations/dataset_coco.json          Karpathy split with the same captions
    <out>/annotations/refs(synth).p              RefCOCO pickle (both splits; plain types only)
    <out>/annotations/refs_{split}.json          the same refs as JSON
    <out>/annotations/refs_absent_{split}.json   refs to objects that are not in the image (ann_id -1)
    <out>/annotations/entity_{split}.json        FIND-Bench COCO-Entity

Determinism: each image draws from its own ``numpy.random.Generator`` seeded by (seed, split, index),
and every id that spans images is assigned afterwards in image order, so the bytes written do not
depend on ``workers``.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import pickle
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from pycocotools import mask as mask_utils

__all__ = [
    "COLOURS",
    "GROUND_NAMES",
    "MARKER_NAME",
    "SHAPES",
    "SIZE_WORDS",
    "SPLITS",
    "STUFF_NAMES",
    "Description",
    "Scene",
    "SplitSummary",
    "SynthSummary",
    "Thing",
    "describes",
    "generate",
    "image_id_for",
    "render_scene",
    "unique_descriptions",
]

# ----------------------------------------------------------------------------------------------
# Vocabulary
# ----------------------------------------------------------------------------------------------

SPLITS: tuple[str, ...] = ("train", "val")
MARKER_NAME = ".findlit-synth.json"
_GENERATOR_TAG = "findlit.data.synthetic"
_FORMAT_VERSION = 1

SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "hexagon",
    "diamond",
    "cross",
    "ring",
    "heart",
    "crescent",
)
_PLURAL = {shape: shape + ("es" if shape.endswith("ss") else "s") for shape in SHAPES}

# Thing colours are saturated; stuff colours are muted, so no thing colour is a stuff colour.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 70),
    "blue": (40, 80, 225),
    "yellow": (240, 215, 40),
    "purple": (145, 60, 190),
    "orange": (245, 140, 30),
    "white": (245, 245, 240),
    "black": (30, 30, 30),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)

STUFF_NAMES: tuple[str, ...] = ("sky", "grass", "water", "sand", "dirt", "gravel")
GROUND_NAMES: tuple[str, ...] = STUFF_NAMES[1:]
_STUFF_COLOURS: dict[str, tuple[int, int, int]] = {
    "sky": (145, 195, 235),
    "grass": (90, 140, 65),
    "water": (45, 100, 150),
    "sand": (215, 195, 150),
    "dirt": (125, 95, 70),
    "gravel": (150, 148, 142),
}
_STUFF_SUPERCATEGORY = {
    "sky": "sky",
    "grass": "plant",
    "water": "water",
    "sand": "ground",
    "dirt": "ground",
    "gravel": "ground",
}
# Visualisation colours of the thing categories (the ``color`` field of COCO categories).
_THING_VIS_COLOURS: tuple[tuple[int, int, int], ...] = (
    (220, 20, 60),
    (0, 0, 142),
    (250, 170, 30),
    (106, 0, 228),
    (0, 130, 120),
    (255, 77, 255),
    (120, 166, 157),
    (209, 0, 151),
    (0, 226, 252),
    (182, 182, 255),
)

# Words for the size classes; the first is the canonical one, all are understood by a parser.
SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small", "little"), "large": ("large", "big")}
# Radius of a thing as a fraction of the image side, per size class: the classes do not overlap
# (areas differ by a factor of at least (0.12 / 0.07)^2 ~ 2.9).
_RADIUS_FRACTION: dict[str, tuple[float, float]] = {"small": (0.05, 0.07), "large": (0.12, 0.16)}

THING_CATEGORY_IDS: dict[str, int] = {shape: i + 1 for i, shape in enumerate(SHAPES)}
STUFF_CATEGORY_IDS: dict[str, int] = {name: 101 + i for i, name in enumerate(STUFF_NAMES)}

_SPLIT_CODE = {"train": 0, "val": 1}
# Val ids live in their own range so that changing --train never renumbers val images.
_VAL_ID_OFFSET = 100_000_000

# A thing is kept only if this fraction of its drawn pixels stays visible (else its shape is lost).
_MIN_VISIBLE_FRACTION = 0.5
# ... and if it keeps at least this fraction of the image (tiny slivers are not objects).
_MIN_VISIBLE_AREA = 0.0015
# Stuff regions smaller than this fraction of the image are not named in the language.
_MIN_NAMED_STUFF = 0.03

_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

_INFO = {
    "description": "findlit synthetic shapes-on-stuff dataset",
    "url": "",
    "version": "1.0",
    "year": 2025,
    "contributor": "findlit",
    "date_created": "",
}
_LICENSES = [
    {"url": "http://creativecommons.org/publicdomain/zero/1.0/", "id": 1, "name": "CC0 1.0 (generated data)"}
]


def categories() -> list[dict[str, Any]]:
    """Return the panoptic categories: things 1..K (shapes), then stuff 101.. (regions), COCO key order."""
    cats: list[dict[str, Any]] = []
    for i, shape in enumerate(SHAPES):
        cats.append(
            {
                "supercategory": "shape",
                "color": list(_THING_VIS_COLOURS[i]),
                "isthing": 1,
                "id": THING_CATEGORY_IDS[shape],
                "name": shape,
            }
        )
    for name in STUFF_NAMES:
        cats.append(
            {
                "supercategory": _STUFF_SUPERCATEGORY[name],
                "color": list(_STUFF_COLOURS[name]),
                "isthing": 0,
                "id": STUFF_CATEGORY_IDS[name],
                "name": name,
            }
        )
    return cats


def image_id_for(split: str, index: int) -> int:
    """Return the COCO image id of the ``index``-th image of ``split`` (train: 1.., val: 100000001..)."""
    return index + 1 + (_VAL_ID_OFFSET if split == "val" else 0)


# ----------------------------------------------------------------------------------------------
# Scenes
# ----------------------------------------------------------------------------------------------


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


def _scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Seed the generator of one image: independent of the others, so workers may run in any order."""
    return np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_CODE[split], index]))


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


def _shape_mask(shape: str, u: NDArray[np.float32], v: NDArray[np.float32]) -> NDArray[np.bool_]:
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
        draws.append(_Draw(shape, colour, size_class, (y0, y1, x0, x1), _shape_mask(shape, u, v), shade))
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


def _render(rng: np.random.Generator, size: int) -> Scene:
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
        [_STUFF_COLOURS[n] for n in names] + [COLOURS[d.colour] for d in draws], dtype=np.float32
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
    return _render(_scene_rng(seed, split, index), size)


# ----------------------------------------------------------------------------------------------
# Descriptions (which attributes single an object out)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Description:
    """A description of a thing by attributes; None means "not said"."""

    shape: str
    colour: str | None = None
    size: str | None = None
    hpos: str | None = None
    vpos: str | None = None


def describes(desc: Description, thing: Thing) -> bool:
    """Whether ``thing`` fits every attribute that ``desc`` states."""
    return (
        desc.shape == thing.shape
        and desc.colour in (None, thing.colour)
        and desc.size in (None, thing.size)
        and desc.hpos in (None, thing.hpos)
        and desc.vpos in (None, thing.vpos)
    )


# Attribute sets tried in order: the shape alone, then colour and size, then position (fewest first).
_ATTRIBUTE_SETS: tuple[tuple[str, ...], ...] = (
    (),
    ("colour",),
    ("size",),
    ("colour", "size"),
    ("hpos",),
    ("vpos",),
    ("colour", "hpos"),
    ("colour", "vpos"),
    ("size", "hpos"),
    ("size", "vpos"),
    ("hpos", "vpos"),
    ("colour", "size", "hpos"),
    ("colour", "size", "vpos"),
    ("colour", "hpos", "vpos"),
    ("size", "hpos", "vpos"),
    ("colour", "size", "hpos", "vpos"),
)


def unique_descriptions(things: Sequence[Thing], target: int) -> list[Description]:
    """Every description of ``things[target]`` that fits no other thing, fewest attributes first.

    A lone horizontal position "center" (or vertical "middle") has no wording and is not offered.
    Empty when the target cannot be singled out (an identical twin in the same third of the image).
    """
    t = things[target]
    found: list[Description] = []
    for attrs in _ATTRIBUTE_SETS:
        if "hpos" in attrs and "vpos" not in attrs and t.hpos == "center":
            continue
        if "vpos" in attrs and "hpos" not in attrs and t.vpos == "middle":
            continue
        desc = Description(
            shape=t.shape,
            colour=t.colour if "colour" in attrs else None,
            size=t.size if "size" in attrs else None,
            hpos=t.hpos if "hpos" in attrs else None,
            vpos=t.vpos if "vpos" in attrs else None,
        )
        if sum(describes(desc, other) for other in things) == 1:
            found.append(desc)
    return found


def _choice(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _noun_phrase(rng: np.random.Generator, desc: Description) -> str:
    """``[size] [colour] shape`` of a description, e.g. "big red circle"."""
    words = []
    if desc.size is not None:
        words.append(_choice(rng, SIZE_WORDS[desc.size]))
    if desc.colour is not None:
        words.append(desc.colour)
    words.append(desc.shape)
    return " ".join(words)


def _position_phrase(hpos: str | None, vpos: str | None) -> str:
    """Word a (partial) position as an adverbial: "on the left", "at the top right", "in the center"."""
    if vpos is None:
        return f"on the {hpos}"
    if hpos is None:
        return f"at the {vpos}"
    if vpos == "middle":
        return "in the center" if hpos == "center" else f"in the middle on the {hpos}"
    return f"at the {vpos} {hpos}"


def _position_prefix(hpos: str | None, vpos: str | None) -> str | None:
    """Word a position as an adjective ("left", "top", "top left"), or None when English has none."""
    if hpos == "center" or vpos == "middle":
        return None
    return " ".join(p for p in (vpos, hpos) if p is not None)


def _describe(rng: np.random.Generator, desc: Description, article: str = "the") -> str:
    """Word ``desc`` after ``article`` ("" for none), e.g. "the red star on the left"."""
    noun = _noun_phrase(rng, desc)
    lead = f"{article} " if article else ""
    if desc.hpos is None and desc.vpos is None:
        return lead + noun
    prefix = _position_prefix(desc.hpos, desc.vpos)
    if prefix is not None and rng.random() < 0.3:
        return f"{lead}{prefix} {noun}"
    return f"{lead}{noun} {_position_phrase(desc.hpos, desc.vpos)}"


def _indefinite(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _join(items: Sequence[str]) -> str:
    """Join items as "a", "a and b" or "a, b and c"."""
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


# ----------------------------------------------------------------------------------------------
# Language: captions, refs, absent refs, entity sentences
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Context:
    """What the language of one image may mention: things, and the stuff large enough to name."""

    things: tuple[Thing, ...]
    grounds: tuple[str, ...]  # named non-sky stuff, largest first
    has_sky: bool


def _context(scene: Scene) -> _Context:
    min_area = _MIN_NAMED_STUFF * scene.segment_ids.size
    named = sorted((s for s in scene.stuff if s.area >= min_area), key=lambda s: -s.area)
    return _Context(
        scene.things,
        tuple(s.name for s in named if s.name != "sky"),
        any(s.name == "sky" for s in named),
    )


def _mention(rng: np.random.Generator, thing: Thing, size_p: float = 0.4, pos_p: float = 0.0) -> str:
    """Mention a thing in a caption, e.g. "a large red circle" (need not single it out)."""
    desc = Description(
        thing.shape,
        colour=thing.colour,
        size=thing.size if rng.random() < size_p else None,
    )
    text = _indefinite(_noun_phrase(rng, desc))
    if rng.random() < pos_p:
        text += " " + _loose_position(rng, thing)
    return text


def _loose_position(rng: np.random.Generator, thing: Thing) -> str:
    """Word a thing's position fully or partly ("on the left" for a top-left thing): true, not unique."""
    h, v = thing.hpos, thing.vpos
    options: list[tuple[str | None, str | None]] = [(h, v)]
    if h != "center":
        options.append((h, None))
    if v != "middle":
        options.append((None, v))
    hpos, vpos = options[int(rng.integers(len(options)))]
    return _position_phrase(hpos, vpos)


def _some_things(rng: np.random.Generator, things: Sequence[Thing], most: int) -> list[Thing]:
    """Up to ``most`` things in a random order."""
    order = rng.permutation(len(things))[:most]
    return [things[int(i)] for i in order]


def _where(ctx: _Context, rng: np.random.Generator) -> str:
    """Where the things are: "on the grass", "on the sand and the water", or "in front of the sky"."""
    if ctx.grounds:
        grounds = [f"the {g}" for g in ctx.grounds[:2]]
        tail = " under the sky" if ctx.has_sky and rng.random() < 0.5 else ""
        return f"on {_join(grounds)}{tail}"
    return "in front of the sky" if ctx.has_sky else "in the picture"


def _verb(count: int, plural: str) -> str:
    return plural if count > 1 else plural + "s"


def _group_mentions(rng: np.random.Generator, things: Sequence[Thing], size_p: float = 0.4) -> list[str]:
    """Mention things grouped by colour and shape: "two red circles", "a large blue star"."""
    groups: dict[tuple[str, str], list[Thing]] = {}
    for t in things:
        groups.setdefault((t.colour, t.shape), []).append(t)
    mentions = []
    for (colour, shape), members in groups.items():
        if len(members) == 1:
            mentions.append(_mention(rng, members[0], size_p=size_p))
            continue
        sizes = {t.size for t in members}
        size = (
            _choice(rng, SIZE_WORDS[members[0].size]) + " "
            if len(sizes) == 1 and rng.random() < size_p
            else ""
        )
        mentions.append(f"{_NUMBER_WORDS[len(members)]} {size}{colour} {_PLURAL[shape]}")
    return mentions


def _caption_list(ctx: _Context, rng: np.random.Generator) -> str | None:
    chosen = _some_things(rng, ctx.things, 4)
    verb = _verb(len(chosen), _choice(rng, ("lie", "sit", "rest")))
    return f"{_capitalise(_join(_group_mentions(rng, chosen)))} {verb} {_where(ctx, rng)}."


def _caption_count(ctx: _Context, rng: np.random.Generator) -> str | None:
    n = len(ctx.things)
    head = "A single shape" if n == 1 else f"{_capitalise(_NUMBER_WORDS[n])} shapes"
    return f"{head} {_where(ctx, rng)}."


def _caption_picture(ctx: _Context, rng: np.random.Generator) -> str | None:
    things = _join(_group_mentions(rng, _some_things(rng, ctx.things, 4), size_p=0.6))
    stuff = [f"the {g}" for g in ctx.grounds] + (["the sky"] if ctx.has_sky else [])
    if not stuff:
        return f"A picture of {things}."
    return f"A picture of {things} with {_join(stuff)} in the background."


def _caption_positions(ctx: _Context, rng: np.random.Generator) -> str | None:
    chosen = _some_things(rng, ctx.things, 2)
    parts = [_mention(rng, t, size_p=0.3, pos_p=1.0) for t in chosen]
    return f"{_capitalise(_join(parts))}."


_GROUND_SCENES = {
    "grass": ("a grassy field", "a green meadow"),
    "water": ("a stretch of water", "calm water"),
    "sand": ("a sandy beach", "a patch of sand"),
    "dirt": ("a dirt field", "bare dirt ground"),
    "gravel": ("a gravel area", "a patch of gravel"),
}


def _caption_scene_first(ctx: _Context, rng: np.random.Generator) -> str | None:
    if not ctx.grounds:
        return None
    scene = _choice(rng, _GROUND_SCENES[ctx.grounds[0]])
    sky = " under the sky" if ctx.has_sky else ""
    things = _join(_group_mentions(rng, _some_things(rng, ctx.things, 4)))
    return f"{_capitalise(scene)}{sky} with {things}."


def _caption_there_are(ctx: _Context, rng: np.random.Generator) -> str | None:
    counts: dict[str, int] = {}
    for t in ctx.things:
        counts[t.shape] = counts.get(t.shape, 0) + 1
    groups = [
        _indefinite(shape) if n == 1 else f"{_NUMBER_WORDS[n]} {_PLURAL[shape]}"
        for shape, n in counts.items()
    ]
    verb = "is" if len(ctx.things) == 1 else "are"
    return f"There {verb} {_join(groups)} {_where(ctx, rng)}."


def _caption_biggest(ctx: _Context, rng: np.random.Generator) -> str | None:
    biggest = max(ctx.things, key=lambda t: t.area)
    noun = _noun_phrase(rng, Description(biggest.shape, colour=biggest.colour))
    if len(ctx.things) == 1:
        return f"Only {_indefinite(noun)} {_where(ctx, rng)}."
    ground = f"the {ctx.grounds[0]}" if ctx.grounds else "the sky" if ctx.has_sky else "the background"
    return f"The {noun} stands out against {ground}."


def _caption_colours(ctx: _Context, rng: np.random.Generator) -> str | None:
    colours = list(dict.fromkeys(t.colour for t in ctx.things))
    noun = "shape" if len(ctx.things) == 1 else "shapes"
    return f"{_capitalise(_join(colours))} {noun} {_where(ctx, rng)}."


_CAPTION_TEMPLATES: tuple[Callable[[_Context, np.random.Generator], str | None], ...] = (
    _caption_list,
    _caption_count,
    _caption_picture,
    _caption_positions,
    _caption_scene_first,
    _caption_there_are,
    _caption_biggest,
    _caption_colours,
)


def _captions(ctx: _Context, rng: np.random.Generator, count: int = 5) -> list[str]:
    """``count`` distinct captions from shuffled templates (retrying templates if texts collide)."""
    captions: list[str] = []
    for _ in range(8):
        for i in rng.permutation(len(_CAPTION_TEMPLATES)):
            text = _CAPTION_TEMPLATES[int(i)](ctx, rng)
            if text is not None and text not in captions:
                captions.append(text)
            if len(captions) == count:
                return captions
    # Unreachable in practice (templates differ in wording); keep the count exact anyway.
    while len(captions) < count:
        captions.append(f"{captions[0][:-1]}, picture {len(captions) + 1}.")
    return captions


def _ref_sentences(rng: np.random.Generator, descs: Sequence[Description]) -> list[str]:
    """1-3 distinct referring sentences: the fewest-attribute description, then other unique ones."""
    wanted = int(rng.integers(1, 4))
    pool = [descs[0]] + [descs[int(i) + 1] for i in rng.permutation(len(descs) - 1)]
    sentences: list[str] = []
    for attempt in range(2 * wanted + 2):
        desc = pool[attempt % len(pool)]
        text = _describe(rng, desc, article="the" if rng.random() < 0.8 else "")
        if text not in sentences:
            sentences.append(text)
        if len(sentences) == wanted:
            break
    return sentences


def _absent_description(rng: np.random.Generator, things: Sequence[Thing]) -> Description | None:
    """Describe an object that is not in the image, or None if every option is present.

    Kinds: a missing shape, a missing colour of a present shape, or the other size of a present
    colour and shape (the hardest negatives).
    """
    present = {(t.shape, t.colour, t.size) for t in things}
    shapes = {t.shape for t in things}
    options: list[list[Description]] = [
        [Description(s, colour=_choice(rng, COLOUR_NAMES) if rng.random() < 0.6 else None) for s in SHAPES],
        [Description(s, colour=c) for s in sorted(shapes) for c in COLOUR_NAMES],
        [Description(s, colour=c, size=z) for (s, c, _) in sorted(present) for z in SIZE_WORDS],
    ]
    kinds = [[d for d in opts if not any(describes(d, t) for t in things)] for opts in options]
    kinds = [k for k in kinds if k]
    if not kinds:
        return None
    chosen = kinds[int(rng.integers(len(kinds)))]
    return chosen[int(rng.integers(len(chosen)))]


@dataclass(frozen=True)
class _EntityPiece:
    """A phrase of an entity sentence before it is placed: text, segment and category."""

    text: str
    segment_id: int
    category_id: int
    want_reference: bool


class _SpanBuilder:
    """Builds a sentence piece by piece and records the character span of every phrase."""

    def __init__(self) -> None:
        self.text = ""
        self.phrases: list[dict[str, Any]] = []

    def add(self, text: str) -> None:
        self.text += text

    def phrase(self, piece: _EntityPiece) -> None:
        text = piece.text if self.text else _capitalise(piece.text)
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


def _add_list(builder: _SpanBuilder, pieces: Sequence[_EntityPiece]) -> None:
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
) -> _SpanBuilder:
    """One sentence naming ``things`` (1-3), optionally a ground and the sky, with exact spans."""
    b = _SpanBuilder()
    verb = _verb(len(things), _choice(rng, ("lie", "sit", "rest")))
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
            b.add(" " + _verb(len(things), "float"))
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
            b.add(" " + _verb(len(things), "float"))
        if sky is not None and rng.random() < 0.6:
            b.add(" below ")
            b.phrase(sky)
    b.add(".")
    return b


def _entity_sentences(ctx: _Context, scene: Scene, rng: np.random.Generator) -> list[_SpanBuilder]:
    """One or two entity sentences naming uniquely described things and the named stuff."""
    pieces: list[_EntityPiece] = []
    for k, t in enumerate(ctx.things):
        descs = unique_descriptions(ctx.things, k)
        if descs:
            # "a red circle" is fine for a unique object, but a position reads better with "the".
            definite = descs[0].hpos is not None or descs[0].vpos is not None or rng.random() < 0.7
            text = _describe(rng, descs[0]) if definite else _indefinite(_describe(rng, descs[0], article=""))
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


# ----------------------------------------------------------------------------------------------
# One image: render, write pixels, produce the per-image annotations
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    out: str
    split: str
    index: int
    size: int
    seed: int


@dataclass
class _ImageResult:
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


def _write_pixels(job: _Job, image_id: int, scene: Scene) -> None:
    """Write the JPEG and the panoptic PNG (id = R + 256 G + 256^2 B)."""
    name = f"{image_id:012d}"
    Image.fromarray(scene.image, mode="RGB").save(Path(job.out, job.split, name + ".jpg"), quality=95)
    ids = scene.segment_ids
    rgb = np.stack([ids % 256, (ids // 256) % 256, ids // 65536], axis=-1).astype(np.uint8)
    Image.fromarray(rgb, mode="RGB").save(Path(job.out, f"panoptic_{job.split}", name + ".png"))


def _build_image(job: _Job) -> _ImageResult:
    """Render one image, write its pixels and return its annotations (runs in a worker)."""
    rng = _scene_rng(job.seed, job.split, job.index)
    scene = _render(rng, job.size)
    image_id = image_id_for(job.split, job.index)
    _write_pixels(job, image_id, scene)
    ctx = _context(scene)

    captions = _captions(ctx, rng)
    refs: list[tuple[int, int, list[str]]] = []
    for k, t in enumerate(scene.things):
        descs = unique_descriptions(scene.things, k)
        if descs:
            refs.append((t.segment_id, t.category_id, _ref_sentences(rng, descs)))
    absent: list[tuple[int, list[str]]] = []
    missing = _absent_description(rng, scene.things)
    if missing is not None:
        sentences = list(dict.fromkeys(_describe(rng, missing) for _ in range(int(rng.integers(1, 3)))))
        absent.append((THING_CATEGORY_IDS[missing.shape], sentences))
    entities = [(b.text, b.phrases) for b in _entity_sentences(ctx, scene, rng)]
    return _ImageResult(
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


# ----------------------------------------------------------------------------------------------
# Assembly of the annotation files (main process, image order: ids do not depend on workers)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitSummary:
    """Counts written for one split."""

    images: int
    segments: int
    things: int
    captions: int
    refs: int
    absent_refs: int
    entity_sentences: int


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`generate` wrote: the output folder, per-split counts and the wall time."""

    out: Path
    splits: dict[str, SplitSummary]
    seconds: float

    def lines(self) -> list[str]:
        """Human-readable lines for a CLI."""
        rows = [f"wrote {self.out} in {self.seconds:.1f} s"]
        for split, s in self.splits.items():
            rows.append(
                f"  {split}: {s.images} images, {s.segments} segments ({s.things} things), "
                f"{s.captions} captions, {s.refs} refs, {s.absent_refs} absent refs, "
                f"{s.entity_sentences} entity sentences"
            )
        return rows


class _Counter:
    """A running id."""

    def __init__(self, start: int = 0) -> None:
        self.value = start

    def next(self) -> int:
        value = self.value
        self.value += 1
        return value


def _image_entry(r: _ImageResult) -> dict[str, Any]:
    """Return an ``images`` entry in COCO's key order (no URLs or capture dates: generated images)."""
    return {
        "license": 1,
        "file_name": f"{r.image_id:012d}.jpg",
        "coco_url": "",
        "height": r.size,
        "width": r.size,
        "date_captured": "",
        "flickr_url": "",
        "id": r.image_id,
    }


def _short_image_entry(r: _ImageResult) -> dict[str, Any]:
    """Return the short ``images`` entry of the entity file."""
    return {"id": r.image_id, "file_name": f"{r.image_id:012d}.jpg", "height": r.size, "width": r.size}


def _panoptic_json(results: Sequence[_ImageResult], split: str) -> dict[str, Any]:
    annotations = [
        {
            "segments_info": [
                {"area": area, "category_id": cat, "iscrowd": 0, "id": sid, "bbox": bbox}
                for sid, cat, area, bbox, _ in r.segments
            ],
            "file_name": f"{r.image_id:012d}.png",
            "image_id": r.image_id,
        }
        for r in results
    ]
    return {
        "info": _INFO,
        "licenses": _LICENSES,
        "images": [_image_entry(r) for r in results],
        "annotations": annotations,
        "categories": categories(),
    }


def _instances_json(
    results: Sequence[_ImageResult], split: str, ann_ids: _Counter
) -> tuple[dict[str, Any], dict[tuple[int, int], int]]:
    """COCO instances of every segment; also returns (image_id, segment_id) -> annotation id."""
    lookup: dict[tuple[int, int], int] = {}
    annotations = []
    for r in results:
        for sid, cat, area, bbox, counts in r.segments:
            ann_id = ann_ids.next()
            lookup[(r.image_id, sid)] = ann_id
            annotations.append(
                {
                    "segmentation": {"counts": counts, "size": [r.size, r.size]},
                    "area": area,
                    "iscrowd": 0,
                    "image_id": r.image_id,
                    "bbox": bbox,
                    "category_id": cat,
                    "id": ann_id,
                }
            )
    cats = [{k: c[k] for k in ("supercategory", "color", "id", "name")} for c in categories()]
    doc = {
        "info": _INFO,
        "licenses": _LICENSES,
        "images": [_image_entry(r) for r in results],
        "annotations": annotations,
        "categories": cats,
    }
    return doc, lookup


def _captions_json(results: Sequence[_ImageResult], split: str, caption_ids: _Counter) -> dict[str, Any]:
    annotations = [
        {"image_id": r.image_id, "id": caption_ids.next(), "caption": c} for r in results for c in r.captions
    ]
    return {
        "info": _INFO,
        "licenses": _LICENSES,
        "images": [_image_entry(r) for r in results],
        "annotations": annotations,
    }


def _tokens(text: str) -> list[str]:
    """Lower-case word tokens without punctuation, as in the Karpathy and RefCOCO files."""
    return [w for w in "".join(c if c.isalnum() else " " for c in text.lower()).split() if w]


def _karpathy_json(results_by_split: dict[str, list[_ImageResult]]) -> dict[str, Any]:
    images = []
    img_ids, sent_ids = _Counter(), _Counter()
    for split, results in results_by_split.items():
        for r in results:
            imgid = img_ids.next()
            sentences = [
                {"tokens": _tokens(c), "raw": c, "imgid": imgid, "sentid": sent_ids.next()}
                for c in r.captions
            ]
            images.append(
                {
                    "filepath": split,
                    "sentids": [s["sentid"] for s in sentences],
                    "filename": f"{r.image_id:012d}.jpg",
                    "imgid": imgid,
                    "split": split,
                    "sentences": sentences,
                    "cocoid": r.image_id,
                }
            )
    return {"images": images, "dataset": "coco"}


def _ref_record(
    ref_id: int,
    image_id: int,
    ann_id: int,
    category_id: int,
    split: str,
    texts: Sequence[str],
    sent_ids: _Counter,
) -> dict[str, Any]:
    """One ref in the key order of the official RefCOCO pickle."""
    sentences = [{"raw": t, "sent": t, "tokens": _tokens(t), "sent_id": sent_ids.next()} for t in texts]
    return {
        "ref_id": ref_id,
        "image_id": image_id,
        "ann_id": ann_id,
        "category_id": category_id,
        "split": split,
        "file_name": f"{image_id:012d}.jpg",
        "sentences": sentences,
        "sent_ids": [s["sent_id"] for s in sentences],
    }


def _pick_reference(
    rng: np.random.Generator,
    pools: dict[str, dict[Any, list[tuple[int, int]]]],
    image_id: int,
    category_id: int,
    colour: str | None,
) -> dict[str, Any] | None:
    """Pick a segment of the same category (same colour if possible) in another image of the split."""
    for key, pool in (((category_id, colour), pools["colour"]), (category_id, pools["category"])):
        candidates = [c for c in pool.get(key, []) if c[0] != image_id]
        if candidates:
            other_image, other_segment = candidates[int(rng.integers(len(candidates)))]
            return {"image_id": other_image, "annotation_id": other_segment, "prob": 1.0}
    return None


def _entity_json(
    results: Sequence[_ImageResult], split: str, seed: int, entity_ids: _Counter
) -> dict[str, Any]:
    """Build FIND-Bench COCO-Entity; references are drawn in image order from a split-level generator."""
    pools: dict[str, dict[Any, list[tuple[int, int]]]] = {"colour": {}, "category": {}}
    colour_of: dict[tuple[int, int], str] = {}
    for r in results:
        for sid, cat, thing_colour in r.things:
            pools["colour"].setdefault((cat, thing_colour), []).append((r.image_id, sid))
            pools["category"].setdefault(cat, []).append((r.image_id, sid))
            colour_of[(r.image_id, sid)] = thing_colour
    rng = np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_CODE[split], 2**31 - 1]))
    annotations = []
    for r in results:
        for sentence, phrases in r.entities:
            out_phrases = []
            for p in phrases:
                entry = {k: p[k] for k in ("phrase", "start_idx", "end_idx", "annotation_id", "category_id")}
                if p["want_reference"]:
                    colour = colour_of.get((r.image_id, p["annotation_id"]))
                    reference = _pick_reference(rng, pools, r.image_id, p["category_id"], colour)
                    if reference is not None:
                        entry["reference"] = reference
                out_phrases.append(entry)
            annotations.append(
                {"id": entity_ids.next(), "image_id": r.image_id, "sentence": sentence, "phrase": out_phrases}
            )
    return {"images": [_short_image_entry(r) for r in results], "annotations": annotations}


def _dump_json(path: Path, doc: Any) -> None:
    """Write JSON deterministically (insertion key order, ASCII, no floats that vary)."""
    path.write_text(json.dumps(doc), encoding="utf-8")


def _assemble(
    out: Path, results_by_split: dict[str, list[_ImageResult]], seed: int
) -> dict[str, SplitSummary]:
    """Write every annotation file; ids that span images are assigned here, in image order."""
    ann_dir = out / "annotations"
    ann_ids, caption_ids, entity_ids = _Counter(1), _Counter(1), _Counter(0)
    lookups: dict[str, dict[tuple[int, int], int]] = {}
    for split, results in results_by_split.items():
        _dump_json(ann_dir / f"panoptic_{split}.json", _panoptic_json(results, split))
        instances, lookups[split] = _instances_json(results, split, ann_ids)
        _dump_json(ann_dir / f"instances_{split}.json", instances)
        _dump_json(ann_dir / f"captions_{split}.json", _captions_json(results, split, caption_ids))
        _dump_json(ann_dir / f"entity_{split}.json", _entity_json(results, split, seed, entity_ids))
    _dump_json(ann_dir / "dataset_coco.json", _karpathy_json(results_by_split))

    ref_ids, sent_ids = _Counter(), _Counter()
    refs: dict[str, list[dict[str, Any]]] = {}
    for split, results in results_by_split.items():
        refs[split] = [
            _ref_record(
                ref_ids.next(), r.image_id, lookups[split][(r.image_id, sid)], cat, split, texts, sent_ids
            )
            for r in results
            for sid, cat, texts in r.refs
        ]
        _dump_json(ann_dir / f"refs_{split}.json", refs[split])
    # Pickle memoises strings by object identity, and whether two equal strings are one object depends
    # on where they were built (a worker or this process). Rebuilding the records from JSON text makes
    # the object graph, hence the pickle bytes, the same for any number of workers.
    canonical = json.loads(json.dumps([ref for split in results_by_split for ref in refs[split]]))
    with open(ann_dir / "refs(synth).p", "wb") as f:
        pickle.dump(canonical, f, protocol=2)
    # Absent refs continue the ref and sentence ids, so they never collide with present ones.
    absent_counts = {}
    for split, results in results_by_split.items():
        absent = [
            _ref_record(ref_ids.next(), r.image_id, -1, cat, split, texts, sent_ids)
            for r in results
            for cat, texts in r.absent
        ]
        absent_counts[split] = len(absent)
        _dump_json(ann_dir / f"refs_absent_{split}.json", absent)

    return {
        split: SplitSummary(
            images=len(results),
            segments=sum(len(r.segments) for r in results),
            things=sum(len(r.things) for r in results),
            captions=sum(len(r.captions) for r in results),
            refs=len(refs[split]),
            absent_refs=absent_counts[split],
            entity_sentences=sum(len(r.entities) for r in results),
        )
        for split, results in results_by_split.items()
    }


# ----------------------------------------------------------------------------------------------
# Output folder and the public entry point
# ----------------------------------------------------------------------------------------------


def _generated_paths(out: Path) -> list[Path]:
    """Everything the generator owns inside ``out`` (and nothing else, so user files survive)."""
    paths = [out / d for s in SPLITS for d in (s, f"panoptic_{s}")]
    names = ["dataset_coco.json", "refs(synth).p"] + [
        f"{kind}_{s}.json"
        for s in SPLITS
        for kind in ("panoptic", "instances", "captions", "refs", "refs_absent", "entity")
    ]
    return paths + [out / "annotations" / n for n in names] + [out / MARKER_NAME]


def _is_generated(out: Path) -> bool:
    marker = out / MARKER_NAME
    try:
        return json.loads(marker.read_text(encoding="utf-8")).get("generator") == _GENERATOR_TAG
    except (OSError, ValueError, AttributeError):
        return False


def _prepare_out(out: Path, params: dict[str, Any]) -> None:
    """Create ``out`` or clear a previous generation in it; refuse a folder the user filled."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not _is_generated(out):
            raise FileExistsError(
                f"{out} is not empty and was not written by the synthetic data generator "
                f"(no {MARKER_NAME}); choose an empty or new folder"
            )
        for path in _generated_paths(out):
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    for sub in ("annotations", *SPLITS, *(f"panoptic_{s}" for s in SPLITS)):
        (out / sub).mkdir(parents=True, exist_ok=True)
    # The marker goes first: an interrupted run leaves a folder that may be generated into again.
    (out / MARKER_NAME).write_text(json.dumps(params, indent=1) + "\n", encoding="utf-8")


def _run_jobs(jobs: Sequence[_Job], workers: int) -> Iterator[_ImageResult]:
    """Results in job order, in this process or in ``workers`` spawned processes."""
    if workers <= 1 or len(jobs) < 2:
        yield from map(_build_image, jobs)
        return
    # spawn, not fork: the caller may hold threads (torch, a DataLoader) that fork would copy half-way.
    context = multiprocessing.get_context("spawn")
    chunk = max(1, min(64, len(jobs) // (4 * workers)))
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        yield from pool.map(_build_image, jobs, chunksize=chunk)


def _validate(train: int, val: int, size: int, seed: int, workers: int) -> None:
    if train < 0 or val < 0 or train + val == 0:
        raise ValueError(f"need at least one image: train={train}, val={val}")
    if train >= _VAL_ID_OFFSET or val >= _VAL_ID_OFFSET:
        raise ValueError(f"at most {_VAL_ID_OFFSET - 1} images per split")
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")


def generate(
    out: Path, train: int, val: int, size: int = 256, seed: int = 0, workers: int = 1
) -> SynthSummary:
    """Write the synthetic dataset (``train`` + ``val`` square images of ``size`` pixels) into ``out``.

    The same ``seed`` gives byte-identical files for any ``workers``. ``out`` must be missing, empty,
    or a previous output of this function (recognised by its marker file, and then replaced);
    otherwise :class:`FileExistsError` is raised and nothing is written.

    Returns:
        The output folder, per-split counts and the wall time in seconds.

    """
    _validate(train, val, size, seed, workers)
    start = time.perf_counter()
    out = Path(out)
    params = {
        "generator": _GENERATOR_TAG,
        "format_version": _FORMAT_VERSION,
        "train": train,
        "val": val,
        "size": size,
        "seed": seed,
    }
    _prepare_out(out, params)
    counts = {"train": train, "val": val}
    jobs = [_Job(str(out), split, i, size, seed) for split in SPLITS for i in range(counts[split])]
    results_by_split: dict[str, list[_ImageResult]] = {split: [] for split in SPLITS}
    for result in _run_jobs(jobs, min(workers, os.cpu_count() or 1) if workers > 1 else 1):
        results_by_split[result.split].append(result)
    splits = _assemble(out, results_by_split, seed)
    return SynthSummary(out=out, splits=splits, seconds=time.perf_counter() - start)
