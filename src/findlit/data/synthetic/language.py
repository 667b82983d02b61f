"""The language of one image: captions, referring expressions and refs to absent objects.

Captions mention things loosely (true, not unique); a ref singles one thing out with the fewest
attributes; an absent ref describes an object that is not in the image. All are drawn from the
generator that rendered the scene, right after it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from findlit.data.synthetic.describe import (
    Description,
    capitalise,
    choose,
    describes,
    indefinite,
    join_words,
    noun_phrase,
    position_phrase,
    word_description,
)
from findlit.data.synthetic.scene import Scene, Thing
from findlit.data.synthetic.vocabulary import COLOUR_NAMES, SHAPES, SIZE_WORDS

_PLURAL = {shape: shape + ("es" if shape.endswith("ss") else "s") for shape in SHAPES}
# Stuff regions smaller than this fraction of the image are not named in the language.
_MIN_NAMED_STUFF = 0.03

_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass(frozen=True)
class LanguageContext:
    """What the language of one image may mention: things, and the stuff large enough to name."""

    things: tuple[Thing, ...]
    grounds: tuple[str, ...]  # named non-sky stuff, largest first
    has_sky: bool


def language_context(scene: Scene) -> LanguageContext:
    """What the language of ``scene`` may mention: its things and its named stuff."""
    min_area = _MIN_NAMED_STUFF * scene.segment_ids.size
    named = sorted((s for s in scene.stuff if s.area >= min_area), key=lambda s: -s.area)
    return LanguageContext(
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
    text = indefinite(noun_phrase(rng, desc))
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
    return position_phrase(hpos, vpos)


def _some_things(rng: np.random.Generator, things: Sequence[Thing], most: int) -> list[Thing]:
    """Up to ``most`` things in a random order."""
    order = rng.permutation(len(things))[:most]
    return [things[int(i)] for i in order]


def _where(ctx: LanguageContext, rng: np.random.Generator) -> str:
    """Where the things are: "on the grass", "on the sand and the water", or "in front of the sky"."""
    if ctx.grounds:
        grounds = [f"the {g}" for g in ctx.grounds[:2]]
        tail = " under the sky" if ctx.has_sky and rng.random() < 0.5 else ""
        return f"on {join_words(grounds)}{tail}"
    return "in front of the sky" if ctx.has_sky else "in the picture"


def verb_form(count: int, plural: str) -> str:
    """The present tense of a verb for ``count`` subjects: "lie" for several, "lies" for one."""
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
            choose(rng, SIZE_WORDS[members[0].size]) + " "
            if len(sizes) == 1 and rng.random() < size_p
            else ""
        )
        mentions.append(f"{_NUMBER_WORDS[len(members)]} {size}{colour} {_PLURAL[shape]}")
    return mentions


def _caption_list(ctx: LanguageContext, rng: np.random.Generator) -> str | None:
    chosen = _some_things(rng, ctx.things, 4)
    verb = verb_form(len(chosen), choose(rng, ("lie", "sit", "rest")))
    return f"{capitalise(join_words(_group_mentions(rng, chosen)))} {verb} {_where(ctx, rng)}."


def _caption_count(ctx: LanguageContext, rng: np.random.Generator) -> str | None:
    n = len(ctx.things)
    head = "A single shape" if n == 1 else f"{capitalise(_NUMBER_WORDS[n])} shapes"
    return f"{head} {_where(ctx, rng)}."


def _caption_picture(ctx: LanguageContext, rng: np.random.Generator) -> str | None:
    things = join_words(_group_mentions(rng, _some_things(rng, ctx.things, 4), size_p=0.6))
    stuff = [f"the {g}" for g in ctx.grounds] + (["the sky"] if ctx.has_sky else [])
    if not stuff:
        return f"A picture of {things}."
    return f"A picture of {things} with {join_words(stuff)} in the background."


def _caption_positions(ctx: LanguageContext, rng: np.random.Generator) -> str | None:
    chosen = _some_things(rng, ctx.things, 2)
    parts = [_mention(rng, t, size_p=0.3, pos_p=1.0) for t in chosen]
    return f"{capitalise(join_words(parts))}."


_GROUND_SCENES = {
    "grass": ("a grassy field", "a green meadow"),
    "water": ("a stretch of water", "calm water"),
    "sand": ("a sandy beach", "a patch of sand"),
    "dirt": ("a dirt field", "bare dirt ground"),
    "gravel": ("a gravel area", "a patch of gravel"),
}


def _caption_scene_first(ctx: LanguageContext, rng: np.random.Generator) -> str | None:
    if not ctx.grounds:
        return None
    scene = choose(rng, _GROUND_SCENES[ctx.grounds[0]])
    sky = " under the sky" if ctx.has_sky else ""
    things = join_words(_group_mentions(rng, _some_things(rng, ctx.things, 4)))
    return f"{capitalise(scene)}{sky} with {things}."


def _caption_there_are(ctx: LanguageContext, rng: np.random.Generator) -> str | None:
    counts: dict[str, int] = {}
    for t in ctx.things:
        counts[t.shape] = counts.get(t.shape, 0) + 1
    groups = [
        indefinite(shape) if n == 1 else f"{_NUMBER_WORDS[n]} {_PLURAL[shape]}" for shape, n in counts.items()
    ]
    verb = "is" if len(ctx.things) == 1 else "are"
    return f"There {verb} {join_words(groups)} {_where(ctx, rng)}."


def _caption_biggest(ctx: LanguageContext, rng: np.random.Generator) -> str | None:
    biggest = max(ctx.things, key=lambda t: t.area)
    noun = noun_phrase(rng, Description(biggest.shape, colour=biggest.colour))
    if len(ctx.things) == 1:
        return f"Only {indefinite(noun)} {_where(ctx, rng)}."
    ground = f"the {ctx.grounds[0]}" if ctx.grounds else "the sky" if ctx.has_sky else "the background"
    return f"The {noun} stands out against {ground}."


def _caption_colours(ctx: LanguageContext, rng: np.random.Generator) -> str | None:
    colours = list(dict.fromkeys(t.colour for t in ctx.things))
    noun = "shape" if len(ctx.things) == 1 else "shapes"
    return f"{capitalise(join_words(colours))} {noun} {_where(ctx, rng)}."


_CAPTION_TEMPLATES: tuple[Callable[[LanguageContext, np.random.Generator], str | None], ...] = (
    _caption_list,
    _caption_count,
    _caption_picture,
    _caption_positions,
    _caption_scene_first,
    _caption_there_are,
    _caption_biggest,
    _caption_colours,
)


def make_captions(ctx: LanguageContext, rng: np.random.Generator, count: int = 5) -> list[str]:
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


def ref_sentences(rng: np.random.Generator, descs: Sequence[Description]) -> list[str]:
    """1-3 distinct referring sentences: the fewest-attribute description, then other unique ones."""
    wanted = int(rng.integers(1, 4))
    pool = [descs[0]] + [descs[int(i) + 1] for i in rng.permutation(len(descs) - 1)]
    sentences: list[str] = []
    for attempt in range(2 * wanted + 2):
        desc = pool[attempt % len(pool)]
        text = word_description(rng, desc, article="the" if rng.random() < 0.8 else "")
        if text not in sentences:
            sentences.append(text)
        if len(sentences) == wanted:
            break
    return sentences


def absent_description(rng: np.random.Generator, things: Sequence[Thing]) -> Description | None:
    """Describe an object that is not in the image, or None if every option is present.

    Kinds: a missing shape, a missing colour of a present shape, or the other size of a present
    colour and shape (the hardest negatives).
    """
    present = {(t.shape, t.colour, t.size) for t in things}
    shapes = {t.shape for t in things}
    options: list[list[Description]] = [
        [Description(s, colour=choose(rng, COLOUR_NAMES) if rng.random() < 0.6 else None) for s in SHAPES],
        [Description(s, colour=c) for s in sorted(shapes) for c in COLOUR_NAMES],
        [Description(s, colour=c, size=z) for (s, c, _) in sorted(present) for z in SIZE_WORDS],
    ]
    kinds = [[d for d in opts if not any(describes(d, t) for t in things)] for opts in options]
    kinds = [k for k in kinds if k]
    if not kinds:
        return None
    chosen = kinds[int(rng.integers(len(kinds)))]
    return chosen[int(rng.integers(len(chosen)))]
