"""Descriptions of things by attributes, which of them single a thing out, and how to word them.

Also the small English helpers (articles, lists, capitals) that the captions, refs and entity
sentences share.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from findlit.data.synthetic.scene import Thing
from findlit.data.synthetic.vocabulary import SIZE_WORDS


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


def choose(rng: np.random.Generator, options: Sequence[str]) -> str:
    """Pick one of ``options`` uniformly."""
    return options[int(rng.integers(len(options)))]


def noun_phrase(rng: np.random.Generator, desc: Description) -> str:
    """``[size] [colour] shape`` of a description, e.g. "big red circle"."""
    words = []
    if desc.size is not None:
        words.append(choose(rng, SIZE_WORDS[desc.size]))
    if desc.colour is not None:
        words.append(desc.colour)
    words.append(desc.shape)
    return " ".join(words)


def position_phrase(hpos: str | None, vpos: str | None) -> str:
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


def word_description(rng: np.random.Generator, desc: Description, article: str = "the") -> str:
    """Word ``desc`` after ``article`` ("" for none), e.g. "the red star on the left"."""
    noun = noun_phrase(rng, desc)
    lead = f"{article} " if article else ""
    if desc.hpos is None and desc.vpos is None:
        return lead + noun
    prefix = _position_prefix(desc.hpos, desc.vpos)
    if prefix is not None and rng.random() < 0.3:
        return f"{lead}{prefix} {noun}"
    return f"{lead}{noun} {position_phrase(desc.hpos, desc.vpos)}"


def indefinite(phrase: str) -> str:
    """Put "a" or "an" before ``phrase``."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def join_words(items: Sequence[str]) -> str:
    """Join items as "a", "a and b" or "a, b and c"."""
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def capitalise(text: str) -> str:
    """Upper-case the first character of ``text``."""
    return text[:1].upper() + text[1:]
