"""Overlays of predicted masks on an image, and the per-image JSON of RLE masks `findlit predict` writes."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pycocotools import mask as mask_utils
from torch import Tensor

from findlit.atomic_files import atomic_write
from findlit.errors import OutputExistsError
from findlit.outputs.coco_writers import as_mask_array, encode_masks

LABEL_CHARS = 32
"""Longest label written on an overlay; longer sentences are cut with an ellipsis."""


class OverlayLayers(NamedTuple):
    """What an overlay draws of one image: masks bool[N,h,w] at the prediction's size, N labels, N scores."""

    masks: Tensor
    labels: list[str]
    scores: list[float]


def shorten(text: str, limit: int = LABEL_CHARS) -> str:
    """``text`` on one line, cut at a word boundary to at most ``limit`` characters (ellipsis included)."""
    line = " ".join(text.split())
    if len(line) <= limit:
        return line
    cut = line[: limit - 1]
    if " " in cut:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(" ,;:") + "…"


def output_paths(image: str | Path, out: str | Path) -> tuple[Path, Path]:
    """(overlay PNG, RLE JSON) that ``image`` gets in folder ``out``."""
    stem = Path(image).stem
    return Path(out) / f"{stem}.png", Path(out) / f"{stem}.json"


def refuse_existing(paths: Sequence[Path]) -> None:
    """Raise :class:`~findlit.errors.OutputExistsError` naming those of ``paths`` that exist."""
    existing = [str(path) for path in paths if path.exists()]
    if existing:
        raise OutputExistsError(f"output exists (pass overwrite to replace it): {', '.join(existing)}")


# Hue step of the golden ratio: consecutive masks get far-apart hues, the same index the same colour.
_GOLDEN = 0.618033988749895


def mask_colour(index: int) -> tuple[int, int, int]:
    """The deterministic RGB colour of the ``index``-th mask."""
    hue = (0.1 + index * _GOLDEN) % 1.0
    saturation = 0.85 if index % 2 == 0 else 0.65
    red, green, blue = colorsys.hsv_to_rgb(hue, saturation, 0.95)
    return round(red * 255), round(green * 255), round(blue * 255)


def _as_hwc(image: Tensor | np.ndarray) -> np.ndarray:
    """uint8[H,W,3] from uint8[3,H,W] or [H,W,3] (a [3,H,3] array is read as [H,W,3])."""
    array = image.detach().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image)
    if array.ndim != 3:
        raise ValueError(f"image must be [3,H,W] or [H,W,3], got shape {tuple(array.shape)}")
    if array.shape[-1] != 3 and array.shape[0] == 3:
        array = array.transpose(1, 2, 0)
    if array.shape[-1] != 3:
        raise ValueError(f"image must be [3,H,W] or [H,W,3], got shape {tuple(array.shape)}")
    if array.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {array.dtype}")
    return np.ascontiguousarray(array)


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (the image border counts as outside)."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def _caption(label: str, score: float | None) -> str:
    return label if score is None else f"{label} {score:.2f}"


POSITIVE_CLICK, NEGATIVE_CLICK, BOX = (40, 220, 40), (230, 40, 40), (250, 220, 0)
"""Colours of the visual prompts drawn on an overlay."""


def draw_overlay(
    image: Tensor | np.ndarray,
    masks: Tensor | np.ndarray,
    labels: Sequence[str],
    scores: Sequence[float] | None = None,
    alpha: float = 0.5,
    points: Sequence[Sequence[float]] = (),
    boxes: Sequence[Sequence[float]] = (),
) -> Image.Image:
    """Tint each mask with its colour, outline it, and write its label (and score) at its centroid.

    Clicks (``[x, y]`` or ``[x, y, label]``, image pixels) are drawn as dots, green on the object
    (label 1, the default) and red off it; boxes (``[x0, y0, x1, y1]``) as yellow rectangles.

    Args:
        image: uint8[3,H,W] or uint8[H,W,3].
        masks: bool[N,H,W] at the image's size; later masks are drawn over earlier ones.
        labels: N names.
        scores: N confidences, written as ``name 0.87``; None writes the names only.
        alpha: opacity of the tint, 0 (none) to 1 (solid colour).
        points: clicks ``[x, y]`` or ``[x, y, label]`` to mark.
        boxes: boxes ``[x0, y0, x1, y1]`` to mark.

    Returns:
        An RGB image of size W x H. Pixels outside every mask and away from the labels are unchanged.

    """
    pixels = _as_hwc(image)
    array = as_mask_array(masks, 3)
    if array.shape[1:] != pixels.shape[:2]:
        raise ValueError(f"masks are {array.shape[1:]} but the image is {pixels.shape[:2]}")
    if len(labels) != array.shape[0] or (scores is not None and len(scores) != array.shape[0]):
        raise ValueError(f"{array.shape[0]} masks need as many labels and scores")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")

    canvas = pixels.astype(np.float32)
    for index, mask in enumerate(array):
        colour = np.array(mask_colour(index), dtype=np.float32)
        canvas[mask] = (1.0 - alpha) * canvas[mask] + alpha * colour
        canvas[_boundary(mask)] = colour
    result = Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8), mode="RGB")

    # Labels last, so no tint covers them.
    draw = ImageDraw.Draw(result)
    font = ImageFont.load_default()
    height, width = pixels.shape[:2]
    for index, mask in enumerate(array):
        if not mask.any():
            continue
        rows, columns = np.nonzero(mask)
        text = _caption(labels[index], None if scores is None else float(scores[index]))
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        text_width, text_height = right - left, bottom - top
        x = int(np.clip(columns.mean() - text_width / 2, 0, max(width - text_width, 0)))
        y = int(np.clip(rows.mean() - text_height / 2, 0, max(height - text_height, 0)))
        draw.rectangle((x - 1, y - 1, x + text_width + 1, y + text_height + 1), fill=(0, 0, 0))
        draw.text((x - left, y - top), text, fill=mask_colour(index), font=font)
    _draw_prompts(draw, (height, width), points, boxes)
    return result


def _draw_prompts(
    draw: ImageDraw.ImageDraw,
    size: tuple[int, int],
    points: Sequence[Sequence[float]],
    boxes: Sequence[Sequence[float]],
) -> None:
    """Boxes as rectangles, then clicks as dots with a black rim (sized to the image)."""
    radius = max(3, min(size) // 80)
    for box in boxes:
        x0, y0, x1, y1 = (float(v) for v in box[:4])
        draw.rectangle((x0, y0, x1, y1), outline=BOX, width=max(2, radius // 2))
    for point in points:
        x, y = float(point[0]), float(point[1])
        positive = len(point) < 3 or float(point[2]) == 1
        draw.ellipse(
            (x - radius, y - radius, x + radius, y + radius),
            fill=POSITIVE_CLICK if positive else NEGATIVE_CLICK,
            outline=(0, 0, 0),
            width=max(1, radius // 3),
        )


def save_overlay(
    path: str | Path,
    image: Tensor | np.ndarray,
    masks: Tensor | np.ndarray,
    labels: Sequence[str],
    scores: Sequence[float] | None = None,
    alpha: float = 0.5,
    points: Sequence[Sequence[float]] = (),
    boxes: Sequence[Sequence[float]] = (),
) -> Path:
    """Draw an overlay (see :func:`draw_overlay`) and save it atomically; the suffix picks the format."""
    target = Path(path)
    overlay = draw_overlay(image, masks, labels, scores, alpha, points, boxes)
    image_format = Image.registered_extensions().get(target.suffix.lower(), "PNG")
    with atomic_write(target) as file:
        overlay.save(file, format=image_format)
    return target


def rle_json(
    masks: Tensor | np.ndarray, labels: Sequence[str], scores: Sequence[float] | None = None
) -> list[dict[str, Any]]:
    """One JSON-ready dict per mask: ``{label, score, segmentation: {size, counts: str}, area, bbox}``.

    Args:
        masks: bool[N,H,W].
        labels: N names.
        scores: N confidences, or None (then ``score`` is null).

    Returns:
        N dicts; ``bbox`` is [x, y, w, h] as pycocotools computes it.

    """
    rles = encode_masks(masks)
    if len(labels) != len(rles) or (scores is not None and len(scores) != len(rles)):
        raise ValueError(f"{len(rles)} masks need as many labels and scores")
    entries: list[dict[str, Any]] = []
    for index, rle in enumerate(rles):
        coco_rle = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
        entries.append(
            {
                "label": labels[index],
                "score": None if scores is None else float(scores[index]),
                "segmentation": rle,
                "area": int(mask_utils.area(coco_rle)),
                "bbox": [float(v) for v in mask_utils.toBbox(coco_rle)],
            }
        )
    return entries
