"""Transforms that keep a :class:`~findlit.data.sample.Sample`'s image, masks and texts consistent.

Geometric transforms move ``image`` (uint8[3,H,W]), ``masks`` (bool[N,H,W], N may be 0) and
``ignore_mask`` (bool[H,W]) together; text transforms edit ``captions``, ``sentences`` and
``entities`` and keep entity phrase spans exact. Any field may be absent. ``orig_size`` is never
changed: it is the size on disk.

A sample read from a feature cache carries ``features`` (level -> [C,H/s,W/s]) and
``padding_mask`` instead of ``image``: :func:`build_feature_transforms` resizes its targets to the
cached image size, pads them to the features' frame (:class:`PadToFeatures`) and, in training,
only flips (the features cannot be rescaled or cropped).

Every transform takes an explicit ``torch.Generator`` and draws all its randomness from it (the
dataset seeds one per sample from (seed, epoch, index)), so a run and its resumed run see the
same augmentations. Transforms return a new dict and never modify the input's tensors in place.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as tvf

from findlit.data.sample import EntityPrompt, Sample
from findlit.errors import ConfigError
from findlit.nearest_resize import resize_nearest

__all__ = [
    "Compose",
    "LargeScaleJitter",
    "PadToFeatures",
    "RandomHorizontalFlip",
    "Resize",
    "Transform",
    "TransformConfig",
    "build_feature_transforms",
    "build_transforms",
    "swap_left_right",
    "swap_left_right_spans",
]


@runtime_checkable
class Transform(Protocol):
    """A sample-to-sample transform whose randomness comes only from ``generator``."""

    def __call__(self, sample: Sample, generator: torch.Generator) -> Sample:
        """Return a new sample; the input dict and its tensors are left unchanged."""
        ...


class Compose:
    """Apply transforms in order, all drawing from the same generator.

    Args:
        transforms: the transforms, applied first to last.

    """

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms: tuple[Transform, ...] = tuple(transforms)

    def __call__(self, sample: Sample, generator: torch.Generator) -> Sample:
        """Apply every transform in turn; with no transforms, return a shallow copy."""
        out = sample.copy()
        for transform in self.transforms:
            out = transform(out, generator)
        return out

    def __len__(self) -> int:
        return len(self.transforms)

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"{type(self).__name__}([{inner}])"


# ---------------------------------------------------------------------------------------------
# Geometry helpers
# ---------------------------------------------------------------------------------------------


def _spatial_size(sample: Sample) -> tuple[int, int] | None:
    """(H, W) shared by ``image``, ``masks`` and ``ignore_mask``; None if none is present.

    Raises:
        ValueError: if the present fields disagree, since transforming them would misalign them.

    """
    sizes: dict[str, tuple[int, int]] = {}
    for key in ("image", "masks", "ignore_mask"):
        value = sample.get(key)
        if isinstance(value, Tensor):
            sizes[key] = (int(value.shape[-2]), int(value.shape[-1]))
    if not sizes:
        return None
    if len(set(sizes.values())) > 1:
        raise ValueError(f"sample {sample.get('image_id')}: image and masks differ in size: {sizes}")
    return next(iter(sizes.values()))


def _scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """Size of an H x W image scaled by ``scale``, rounded half up, at least 1 x 1."""
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def _resize_and_crop(
    sample: Sample, size: tuple[int, int], crop: tuple[int, int, int, int] | None = None
) -> Sample:
    """Resize the geometric fields to ``size`` = (h, w), then keep ``crop`` = (top, left, height, width).

    The image is resized bilinearly with antialias; masks and ignore_mask by nearest neighbour
    (:func:`~findlit.nearest_resize.resize_nearest`).
    """
    out = sample.copy()
    old = _spatial_size(sample)
    if old is None:
        return out
    height, width = size
    top, left, crop_h, crop_w = crop if crop is not None else (0, 0, height, width)
    if old == size and (crop_h, crop_w) == size:
        return out

    image = sample.get("image")
    if image is not None:
        if old != size:
            image = tvf.resize(
                image, [height, width], interpolation=InterpolationMode.BILINEAR, antialias=True
            )
        # clone: a sliced view would keep (and share with worker IPC) the whole resized storage.
        out["image"] = image[..., top : top + crop_h, left : left + crop_w].clone()

    for key in ("masks", "ignore_mask"):
        mask = sample.get(key)
        if isinstance(mask, Tensor):
            # pixel centres matched, as the bilinear image resize: masks stay on the image
            out[key] = resize_nearest(mask, size, (top, left, crop_h, crop_w))
    return out


def _uniform(generator: torch.Generator, n: int) -> list[float]:
    """``n`` draws from U[0, 1) taken from ``generator`` only (never the global RNG)."""
    return torch.rand(n, generator=generator, device=generator.device).tolist()


class Resize:
    """Resize keeping the aspect ratio, by the shortest edge, the longest edge or both.

    With only ``longest_edge``, the longest side becomes exactly ``longest_edge`` (up or down).
    With only ``shortest_edge``, the shortest side becomes ``shortest_edge``. With both, the
    shortest side becomes ``shortest_edge`` unless that makes the longest side exceed
    ``longest_edge``, in which case the longest side becomes ``longest_edge`` (detectron2's
    ``ResizeShortestEdge(max_size=...)``). Deterministic: ``generator`` is not used.

    Args:
        shortest_edge: target length of the shorter side, or None.
        longest_edge: target (or cap) for the longer side, or None.

    Output: image uint8[3,h,w] (bilinear, antialias); masks bool[N,h,w] and ignore_mask bool[h,w]
    (nearest).

    """

    def __init__(self, shortest_edge: int | None = None, longest_edge: int | None = None):
        if shortest_edge is None and longest_edge is None:
            raise ValueError("Resize needs shortest_edge or longest_edge")
        if shortest_edge is not None and shortest_edge <= 0:
            raise ValueError(f"Resize.shortest_edge must be > 0, got {shortest_edge}")
        if longest_edge is not None and longest_edge <= 0:
            raise ValueError(f"Resize.longest_edge must be > 0, got {longest_edge}")
        self.shortest_edge = shortest_edge
        self.longest_edge = longest_edge

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) that an H x W input is resized to."""
        short, long = min(height, width), max(height, width)
        if self.shortest_edge is not None:
            scale = self.shortest_edge / short
            if self.longest_edge is not None and long * scale > self.longest_edge:
                scale = self.longest_edge / long
        else:
            assert self.longest_edge is not None  # checked in __init__
            scale = self.longest_edge / long
        return _scaled_size(height, width, scale)

    def __call__(self, sample: Sample, generator: torch.Generator) -> Sample:
        """Resize ``image``, ``masks`` and ``ignore_mask`` (whichever are present)."""
        size = _spatial_size(sample)
        if size is None:
            return sample.copy()
        return _resize_and_crop(sample, self.output_size(*size))

    def __repr__(self) -> str:
        return f"Resize(shortest_edge={self.shortest_edge}, longest_edge={self.longest_edge})"


class LargeScaleJitter:
    """Large-scale jitter (LSJ) as in FIND / Mask2Former: random rescale, then random crop.

    The longest side is resized to ``image_size * s`` with ``s ~ U(min_scale, max_scale)``, then a
    random window of at most ``image_size`` x ``image_size`` is cropped. Smaller outputs are not
    padded here, but the sample's ``frame`` is set to ``image_size`` x ``image_size``: collate pads
    every batch of LSJ crops to that frame at least (detectron2 pads each crop to it), so a crop's
    padded frame does not depend on its batch mates (nor on how a global batch is split by rank).

    Args:
        image_size: side of the square crop (and the reference for the scale).
        min_scale: lower bound of the scale factor.
        max_scale: upper bound of the scale factor.

    Output: image uint8[3,h,w], masks bool[N,h,w], ignore_mask bool[h,w], with h, w <= image_size;
    frame (image_size, image_size).
    Masks that the crop removes are kept (all False) so indices into ``masks`` stay valid.

    """

    def __init__(self, image_size: int = 1024, min_scale: float = 0.1, max_scale: float = 2.0):
        if image_size <= 0:
            raise ValueError(f"LargeScaleJitter.image_size must be > 0, got {image_size}")
        if min_scale <= 0:
            raise ValueError(f"LargeScaleJitter.min_scale must be > 0, got {min_scale}")
        if max_scale < min_scale:
            raise ValueError(
                f"LargeScaleJitter.max_scale must be >= min_scale, got {max_scale} < {min_scale}"
            )
        self.image_size = image_size
        self.min_scale = min_scale
        self.max_scale = max_scale

    def __call__(self, sample: Sample, generator: torch.Generator) -> Sample:
        """Rescale and crop ``image``, ``masks`` and ``ignore_mask`` with the same window."""
        # Always draw the three numbers, so the generator's stream does not depend on the sample.
        u_scale, u_top, u_left = _uniform(generator, 3)
        old = _spatial_size(sample)
        if old is None:
            return sample.copy()
        sample = sample.copy()
        sample["frame"] = (self.image_size, self.image_size)
        scale = self.min_scale + (self.max_scale - self.min_scale) * u_scale
        height, width = _scaled_size(*old, self.image_size * scale / max(old))
        crop_h, crop_w = min(height, self.image_size), min(width, self.image_size)
        # Independent offsets per axis (detectron2's FixedSizeCrop reuses one draw for both).
        top = int((height - crop_h) * u_top + 0.5)
        left = int((width - crop_w) * u_left + 0.5)
        return _resize_and_crop(sample, (height, width), (top, left, crop_h, crop_w))

    def __repr__(self) -> str:
        return (
            f"LargeScaleJitter(image_size={self.image_size}, min_scale={self.min_scale}, "
            f"max_scale={self.max_scale})"
        )


# ---------------------------------------------------------------------------------------------
# Left <-> right in texts
# ---------------------------------------------------------------------------------------------

# "left"/"right" as a whole word, optionally with a suffix that keeps the direction
# ("leftmost", "rightwards"); "-hand" needs nothing special since "-" ends a word. The
# lookbehind/lookahead reject letters and digits on either side, so "bright", "upright",
# "leftover" and "rightly" are untouched. Group 1 is the part that is replaced.
_LEFT_RIGHT = re.compile(r"(?<![^\W_])(left|right)(?:most|wards?)?(?![^\W_])", re.IGNORECASE)
_OPPOSITE = {"left": "right", "right": "left"}


def _opposite(word: str) -> str:
    """Swap one "left"/"right" keeping its case: all upper, capitalised, or lower."""
    swapped = _OPPOSITE[word.lower()]
    if word.isupper():
        return swapped.upper()
    if word[0].isupper():
        return swapped.capitalize()
    return swapped


def _edits(text: str) -> list[tuple[int, int, str]]:
    """List the (start, end, replacement) of every "left"/"right" to swap in ``text``, in order."""
    return [(m.start(1), m.end(1), _opposite(m.group(1))) for m in _LEFT_RIGHT.finditer(text)]


def swap_left_right(text: str) -> str:
    """Swap the words "left" and "right" as a horizontal flip requires.

    Whole words only, case preserved ("Left" -> "Right", "LEFT" -> "RIGHT"); "leftmost",
    "left-hand" and "leftward(s)" follow; words that merely contain them ("bright", "leftover")
    do not change.
    """
    return swap_left_right_spans(text, [])[0]


def swap_left_right_spans(text: str, spans: Sequence[tuple[int, int]]) -> tuple[str, list[tuple[int, int]]]:
    """Swap "left"/"right" in ``text`` (see :func:`swap_left_right`) and move character spans with it.

    Args:
        text: the sentence.
        spans: (start, end) character offsets into ``text``.

    Returns:
        The swapped text and the spans in it, so that ``new_text[start:end]`` is the swapped
        version of ``text[old_start:old_end]``. A span edge inside a swapped word (unusual)
        moves outwards to the word's edge so the span still covers the whole word.

    """
    edits = _edits(text)
    if not edits:
        return text, [(int(s), int(e)) for s, e in spans]

    pieces: list[str] = []
    cursor = 0
    for start, end, replacement in edits:
        pieces.append(text[cursor:start])
        pieces.append(replacement)
        cursor = end
    pieces.append(text[cursor:])

    def move(position: int, is_end: bool) -> int:
        shift = 0
        for start, end, replacement in edits:
            delta = len(replacement) - (end - start)
            if position >= end:
                shift += delta
            elif position > start:  # strictly inside the swapped word
                return start + shift + (len(replacement) if is_end else 0)
            else:
                break
        return position + shift

    return "".join(pieces), [(move(s, False), move(e, True)) for s, e in spans]


def _swap_entity(entity: EntityPrompt) -> EntityPrompt:
    """Return ``entity`` with its sentence swapped and its phrase spans moved to match."""
    out = entity.copy()
    out["sentence"], out["spans"] = swap_left_right_spans(entity["sentence"], entity["spans"])
    return out


class RandomHorizontalFlip:
    """With probability ``p``, mirror the image left to right and make the texts agree.

    Flips ``image`` [3,H,W], ``masks`` [N,H,W] and ``ignore_mask`` [H,W] along W; when
    ``swap_left_right``, also swaps "left"/"right" in ``captions``, ``sentences`` and
    ``entities`` (spans recomputed), since "the left dog" names the other dog after a flip.
    A cached-features sample has its ``features`` (every level [C,h,w]) and ``padding_mask``
    [H,W] flipped along W too: the whole padded frame is mirrored, so its padding moves to the
    left and ``padding_mask`` (not ``image_size``) says where the image is.

    Args:
        p: probability of flipping.
        swap_left_right: swap the words in the texts on a flip.

    """

    def __init__(self, p: float = 0.5, swap_left_right: bool = True):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip.p must be in [0, 1], got {p}")
        self.p = p
        self.swap_left_right = swap_left_right

    def __call__(self, sample: Sample, generator: torch.Generator) -> Sample:
        """Flip (or not) the geometric fields and, if enabled, swap directions in the texts."""
        # Always draw, even for p in {0, 1}, so later transforms see the same stream.
        (u,) = _uniform(generator, 1)
        out = sample.copy()
        if u >= self.p:
            return out
        for key in ("image", "masks", "ignore_mask", "padding_mask"):
            value = sample.get(key)
            if isinstance(value, Tensor):
                out[key] = value.flip(-1)
        if "features" in sample:
            out["features"] = {level: value.flip(-1) for level, value in sample["features"].items()}
        if self.swap_left_right:
            if "captions" in sample:
                out["captions"] = [swap_left_right(c) for c in sample["captions"]]
            if "sentences" in sample:
                out["sentences"] = [swap_left_right(s) for s in sample["sentences"]]
            if "entities" in sample:
                out["entities"] = [_swap_entity(e) for e in sample["entities"]]
        return out

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p}, swap_left_right={self.swap_left_right})"


class PadToFeatures:
    """Pad the targets of a cached-features sample to the frame its features cover.

    The cache stores the features of the resized image padded (bottom, right) to H x W, a
    multiple of 32; ``padding_mask`` bool[H,W] gives that frame. ``masks`` (resized to the
    cached ``image_size`` h x w) are padded with False and ``ignore_mask`` with True, as collate
    pads them, so a later flip mirrors features and targets alike. Deterministic.
    """

    def __call__(self, sample: Sample, generator: torch.Generator) -> Sample:
        """Pad ``masks`` and ``ignore_mask`` from ``image_size`` to ``padding_mask``'s size."""
        out = sample.copy()
        frame_h, frame_w = (int(n) for n in sample["padding_mask"].shape)
        height, width = sample["image_size"]
        padding = (0, frame_w - width, 0, frame_h - height)
        if "masks" in sample:
            out["masks"] = torch.nn.functional.pad(self._checked(sample, "masks"), padding, value=False)
        if "ignore_mask" in sample:
            out["ignore_mask"] = torch.nn.functional.pad(
                self._checked(sample, "ignore_mask"), padding, value=True
            )
        return out

    @staticmethod
    def _checked(sample: Sample, key: str) -> Tensor:
        mask: Tensor = sample[key]  # type: ignore[literal-required]
        if tuple(mask.shape[-2:]) != tuple(sample["image_size"]):
            raise ValueError(
                f"sample {sample.get('image_id')}: {key} is {tuple(mask.shape[-2:])} after the resize, "
                f"but the cached image is {tuple(sample['image_size'])}"
            )
        return mask

    def __repr__(self) -> str:
        return "PadToFeatures()"


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


@dataclass
class TransformConfig:
    """Data augmentation and resizing (config key ``transforms``).

    Args:
        image_size: side of the LSJ crop in training; longest side (or its cap) in evaluation.
        min_scale: smallest LSJ scale: the longest side is resized to image_size * scale.
        max_scale: largest LSJ scale.
        lsj: use large-scale jitter in training; if False, training resizes as evaluation does.
        flip: random horizontal flip (p = 0.5) in training.
        swap_left_right: on a flip, swap the words "left" and "right" in captions, sentences and entities.
        eval_shortest_edge: in evaluation, resize so the shortest edge is this, with the longest
            side capped at image_size; None resizes the longest side to image_size.

    """

    image_size: int = 1024
    min_scale: float = 0.1
    max_scale: float = 2.0
    lsj: bool = True
    flip: bool = True
    swap_left_right: bool = True
    eval_shortest_edge: int | None = None

    def __post_init__(self) -> None:
        if self.image_size <= 0:
            raise ConfigError(f"transforms.image_size must be > 0, got {self.image_size}")
        if self.min_scale <= 0:
            raise ConfigError(f"transforms.min_scale must be > 0, got {self.min_scale}")
        if self.max_scale < self.min_scale:
            raise ConfigError(
                f"transforms.max_scale must be >= min_scale, got {self.max_scale} < {self.min_scale}"
            )
        if self.eval_shortest_edge is not None and self.eval_shortest_edge <= 0:
            raise ConfigError(
                f"transforms.eval_shortest_edge must be > 0 or null, got {self.eval_shortest_edge}"
            )


def build_transforms(cfg: TransformConfig, train: bool) -> Compose:
    """Build the training (flip, then LSJ) or evaluation (deterministic resize) pipeline of ``cfg``."""
    resize = Resize(shortest_edge=cfg.eval_shortest_edge, longest_edge=cfg.image_size)
    if not train:
        return Compose([resize])
    transforms: list[Transform] = []
    # Flip first, as detectron2's LSJ recipe does: it is cheaper on the (usually smaller) input.
    if cfg.flip:
        transforms.append(RandomHorizontalFlip(p=0.5, swap_left_right=cfg.swap_left_right))
    if cfg.lsj:
        transforms.append(LargeScaleJitter(cfg.image_size, cfg.min_scale, cfg.max_scale))
    else:
        transforms.append(resize)
    return Compose(transforms)


def build_feature_transforms(cfg: TransformConfig, train: bool) -> Compose:
    """The pipeline of a dataset read from a feature cache: resize targets, pad them, flip (training).

    The features were computed at the evaluation resize of ``cfg``; the targets get the same
    resize, then :class:`PadToFeatures`. Large-scale jitter cannot apply to cached features, so
    the caller rejects ``lsj: true`` in training.
    """
    transforms: list[Transform] = [
        Resize(shortest_edge=cfg.eval_shortest_edge, longest_edge=cfg.image_size),
        PadToFeatures(),
    ]
    if train and cfg.flip:
        transforms.append(RandomHorizontalFlip(p=0.5, swap_left_right=cfg.swap_left_right))
    return Compose(transforms)
