"""The vocabulary of the synthetic dataset: splits, shapes, colours, stuff, size words and COCO ids.

Everything here is a constant shared by the renderer, the language and the annotation files; the
category ids and the image ids are the ones written into every COCO file.
"""

from __future__ import annotations

from typing import Any

SPLITS: tuple[str, ...] = ("train", "val", "test")
"""Training images; validation images (checkpoint selection, config choices); test images (reported)."""

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
# Base colours of the stuff (also the ``color`` of their COCO categories).
STUFF_COLOURS: dict[str, tuple[int, int, int]] = {
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

THING_CATEGORY_IDS: dict[str, int] = {shape: i + 1 for i, shape in enumerate(SHAPES)}
STUFF_CATEGORY_IDS: dict[str, int] = {name: 101 + i for i, name in enumerate(STUFF_NAMES)}

# Code of a split in the seed of its generators.
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
# Val and test ids live in their own ranges, so that changing --train never renumbers them.
VAL_ID_OFFSET = 100_000_000
TEST_ID_OFFSET = 200_000_000
SPLIT_ID_OFFSETS = {"train": 0, "val": VAL_ID_OFFSET, "test": TEST_ID_OFFSET}


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
                "color": list(STUFF_COLOURS[name]),
                "isthing": 0,
                "id": STUFF_CATEGORY_IDS[name],
                "name": name,
            }
        )
    return cats


def image_id_for(split: str, index: int) -> int:
    """The COCO image id of the ``index``-th image of ``split`` (train 1.., val 1e8 + 1.., test 2e8 + 1..)."""
    return index + 1 + SPLIT_ID_OFFSETS[split]
