"""Decoding pixels: images, panoptic PNGs and instance masks, with errors that name the file and record."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from pycocotools import mask as mask_utils
from torch import Tensor

from findlit.data.records import ImageInfo, InstanceAnnotation, PanopticRecord
from findlit.errors import DataError

# Image.open refuses nothing by size, but a decompression bomb warning is a real hazard on user data.
Image.MAX_IMAGE_PIXELS = 20_000 * 20_000


def read_image(info: ImageInfo, key: str | None = None) -> Tensor:
    """Decode an image file to RGB.

    Returns:
        uint8[3,H,W]. A missing, corrupt or truncated file, or one whose size differs from the
        annotation's, is a :class:`DataError` naming the file and image id.

    """
    pixels = read_rgb(info.path, f"image_id={info.id}", key)
    height, width = pixels.shape[:2]
    if info.height is not None and info.width is not None and (height, width) != (info.height, info.width):
        raise DataError(
            f"image is {height}x{width} but the annotations say {info.height}x{info.width}",
            info.path,
            f"image_id={info.id}",
            key,
        )
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


def read_rgb(
    path: str | Path, record: str | None = None, key: str | None = None, upright: bool = False
) -> np.ndarray:
    """uint8[H,W,3] from an image file; errors name the file (and ``record`` and ``key``).

    ``upright`` applies the file's EXIF orientation (the image as it is shown, for photos given to
    predict). Annotated images are read as stored, since their annotations are in that frame.
    """
    return read_pixels(path, record, key, upright)


def read_pixels(
    path: str | Path,
    record: str | None = None,
    key: str | None = None,
    upright: bool = False,
    convert: Callable[[Image.Image, str | Path, str | None, str | None], np.ndarray] | None = None,
) -> np.ndarray:
    """An image file decoded by ``convert`` (default: to uint8[H,W,3] RGB); errors as :func:`read_rgb`."""
    convert = convert or _to_rgb
    try:
        with Image.open(path) as image:
            # load() forces the full decode, so a truncated file fails here and not later.
            image.load()
            shown = ImageOps.exif_transpose(image) if upright else image
            return convert(shown, path, record, key)
    except FileNotFoundError:
        raise DataError("image file not found", path, record, key) from None
    except IsADirectoryError:
        raise DataError("is a folder, not an image file", path, record, key) from None
    except Image.DecompressionBombError:
        raise DataError(
            f"image is larger than {Image.MAX_IMAGE_PIXELS:,} pixels (PIL.Image.MAX_IMAGE_PIXELS): "
            "refused as a possible decompression bomb",
            path,
            record,
            key,
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DataError(f"corrupt or truncated image: {error}", path, record, key) from None


SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
"""PIL modes of 16-bit greyscale files (PNG, TIFF): scaled to 8 bits, since ``convert("RGB")`` would
clip every value above 255 to white."""


def _to_rgb(image: Image.Image, path: str | Path, record: str | None, key: str | None) -> np.ndarray:
    """uint8[H,W,3] of an opened image of any 8- or 16-bit mode; 32-bit modes are refused."""
    if image.mode in SIXTEEN_BIT_MODES:
        grey = np.asarray(image, dtype=np.uint16)
        scaled = ((grey.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(scaled[..., None], 3, axis=-1)
    if image.mode in ("I", "F"):
        # 32-bit integer or float pixels have no agreed range to map onto 0..255
        raise DataError(
            f"{'32-bit integer' if image.mode == 'I' else 'floating-point'} pixels (PIL mode {image.mode}) "
            "have no 8-bit meaning; save the image as 8-bit RGB or 16-bit greyscale",
            path,
            record,
            key,
        )
    return np.array(image.convert("RGB"))


def rgb_to_ids(rgb: np.ndarray) -> np.ndarray:
    """int64[H,W] R + 256·G + 256²·B of uint8[H,W,3] pixels (COCO panoptic's id encoding)."""
    channels = rgb.astype(np.int64, copy=False)
    return channels[..., 0] | (channels[..., 1] << 8) | (channels[..., 2] << 16)


def _to_ids(image: Image.Image, path: str | Path, record: str | None, key: str | None) -> np.ndarray:
    """int64[H,W] panoptic ids of an opened image; an RGB one is packed by PIL (the common case).

    PIL lays each RGB pixel out as 4 bytes (R, G, B, pad), which read as a little-endian 32-bit word
    are the id plus the pad byte shifted by 24: one C pass and one widening, about half the time of
    widening the three channels and adding them (measured on a 640 x 480 PNG: 0.9 vs 1.5 ms).
    """
    if image.mode != "RGB":
        return rgb_to_ids(_to_rgb(image, path, record, key))
    words = np.asarray(image.convert("RGBX")).view("<u4")[..., 0].astype(np.int64)
    words &= 0xFFFFFF
    return words


def read_panoptic_ids(path: str | Path, record: str | None = None, key: str | None = None) -> np.ndarray:
    """int64[H,W] segment ids of a COCO panoptic PNG file: R + 256·G + 256²·B (0 = void)."""
    return read_pixels(path, record, key, convert=_to_ids)


def panoptic_id_map(record: PanopticRecord, key: str | None = None) -> np.ndarray:
    """Segment id of every pixel of a panoptic PNG: R + 256·G + 256²·B (0 = void).

    Returns:
        int64[H,W].

    """
    ids = read_panoptic_ids(record.png_path, f"image_id={record.image.id}", key)
    if record.image.height is not None and ids.shape != (record.image.height, record.image.width):
        raise DataError(
            f"panoptic PNG is {ids.shape[0]}x{ids.shape[1]}, "
            f"image is {record.image.height}x{record.image.width}",
            record.png_path,
            f"image_id={record.image.id}",
            key,
        )
    return ids


@dataclass(frozen=True)
class PanopticMasks:
    """The decoded segments of one panoptic record. N = number of non-crowd segments.

    masks: bool[N,H,W]; segment_ids, category_ids: int64[N]; ignore: bool[H,W], True on crowd
    and void pixels.
    """

    masks: Tensor
    segment_ids: Tensor
    category_ids: Tensor
    ignore: Tensor


def decode_panoptic(record: PanopticRecord, key: str | None = None) -> PanopticMasks:
    """Decode a panoptic PNG into one mask per non-crowd segment plus the ignore region.

    Every id in the PNG must be in ``segments_info`` and every listed segment must appear in the
    PNG; either mismatch is a :class:`DataError` naming the PNG and the image id.
    """
    ids = panoptic_id_map(record, key)
    name = f"image_id={record.image.id}"
    present = np.unique(ids)
    listed = {segment.id for segment in record.segments}
    unlisted = sorted(int(i) for i in present if i != 0 and int(i) not in listed)
    if unlisted:
        raise DataError(
            f"segment id(s) {unlisted[:5]} in the PNG are absent from segments_info",
            record.png_path,
            name,
            key,
        )
    missing = sorted(listed - {int(i) for i in present})
    if missing:
        raise DataError(
            f"segment id(s) {missing[:5]} of segments_info are absent from the PNG",
            record.png_path,
            name,
            key,
        )
    kept = [segment for segment in record.segments if not segment.iscrowd]
    crowd = [segment.id for segment in record.segments if segment.iscrowd]
    segment_ids = torch.tensor([segment.id for segment in kept], dtype=torch.int64)
    id_map = torch.from_numpy(ids)
    masks = id_map.unsqueeze(0) == segment_ids.view(-1, 1, 1)
    ignore = (id_map == 0) | torch.isin(id_map, torch.tensor(crowd, dtype=torch.int64))
    category_ids = torch.tensor([segment.category_id for segment in kept], dtype=torch.int64)
    return PanopticMasks(masks=masks, segment_ids=segment_ids, category_ids=category_ids, ignore=ignore)


def semantic_map(panoptic: PanopticMasks, category_index: dict[int, int], ignore_index: int = 255) -> Tensor:
    """A semantic target from panoptic masks.

    Args:
        panoptic: decoded panoptic masks of one image.
        category_index: category id -> contiguous class index.
        ignore_index: value of crowd and void pixels.

    Returns:
        int64[H,W] of class indices.

    """
    height, width = panoptic.ignore.shape
    semantic = torch.full((height, width), ignore_index, dtype=torch.int64)
    for mask, category_id in zip(panoptic.masks, panoptic.category_ids.tolist(), strict=True):
        semantic[mask] = category_index[category_id]
    return semantic


def to_rle(segmentation: Any, height: int, width: int) -> dict[str, Any]:
    """Any COCO segmentation (polygons, uncompressed or compressed RLE) as one compressed RLE."""
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation.get("counts"), list):
        return mask_utils.frPyObjects(segmentation, height, width)
    counts = segmentation["counts"]
    return {
        "size": segmentation["size"],
        "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
    }


def decode_instance(
    annotation: InstanceAnnotation, image: ImageInfo, key: str | None = None, source: Path | None = None
) -> Tensor:
    """Decode one instance annotation with pycocotools.

    Args:
        annotation: the annotation to decode.
        image: its image (for the size).
        key: config key of the annotation file, for messages.
        source: the annotation file, for messages.

    Returns:
        bool[H,W]. An undecodable segmentation is a :class:`DataError` naming the file and ann id.

    """
    record = f"image_id={image.id} ann_id={annotation.id}"
    if image.height is None or image.width is None:
        raise DataError("image size unknown, cannot decode its masks", source or image.path, record, key)
    try:
        decoded = mask_utils.decode(to_rle(annotation.segmentation, image.height, image.width))
    except (ValueError, TypeError, KeyError, UnicodeEncodeError) as error:
        raise DataError(f"undecodable segmentation: {error}", source or image.path, record, key) from None
    return torch.from_numpy(decoded.astype(bool))
