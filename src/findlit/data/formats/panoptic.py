"""Reader of COCO panoptic annotations: one JSON plus one PNG per image.

In the PNGs a pixel's segment id is R + 256·G + 256²·B (0 is void). Crowd segments are kept in
the records, flagged ``iscrowd``; the datasets turn them into ignore regions.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from findlit.data.errors import BadRecords
from findlit.data.formats.jsonfile import (
    bbox,
    existing_path,
    field,
    load_json,
    optional_number,
    read_categories,
    read_images,
    top_level_list,
)
from findlit.data.records import Category, Dataset, ImageInfo, PanopticRecord, PanopticSegment
from findlit.errors import DataError


def read_coco_panoptic(
    panoptic_json: str | Path,
    panoptic_root: str | Path,
    image_root: str | Path,
    *,
    bad_records: BadRecords | None = None,
    keys: Mapping[str, str] | None = None,
) -> Dataset:
    """Read a COCO panoptic JSON into one :class:`PanopticRecord` per annotated image.

    Args:
        panoptic_json: e.g. ``annotations/panoptic_val2017.json``.
        panoptic_root: folder of the PNGs named by each annotation's ``file_name``.
        image_root: folder of the images named by ``images[].file_name``.
        bad_records: policy for per-record problems (default: raise on the first).
        keys: config key of each argument, for messages (e.g. ``{"panoptic_json": "data.train[0]..."}``).

    Returns:
        A :class:`Dataset` whose records are :class:`PanopticRecord` and whose categories keep
        ``isthing`` and names (the vocabulary is open).

    """
    keys = keys or {}
    bad_records = bad_records or BadRecords()
    json_path = existing_path(panoptic_json, keys.get("panoptic_json"))
    png_root = existing_path(panoptic_root, keys.get("panoptic_root"), kind="folder")
    images_root = existing_path(image_root, keys.get("image_root"), kind="folder")
    document = load_json(json_path, keys.get("panoptic_json"))
    categories = read_categories(document, json_path, keys.get("panoptic_json"))
    images = read_images(document, json_path, images_root, keys.get("panoptic_json"))

    records: list[PanopticRecord] = []
    for annotation in top_level_list(document, "annotations", json_path, keys.get("panoptic_json")):
        with bad_records.guard():
            try:
                records.append(_panoptic_record(annotation, json_path, png_root, images, categories))
            except DataError as error:
                raise error.with_key(keys.get("panoptic_json")) from None
    files = {"panoptic_json": json_path, "panoptic_root": png_root, "image_root": images_root}
    return Dataset(records=tuple(records), categories=categories, source=json_path, files=files)


def _panoptic_record(
    annotation: object,
    file: Path,
    png_root: Path,
    images: Mapping[int, ImageInfo],
    categories: Mapping[int, Category],
) -> PanopticRecord:
    image_id = field(annotation, "image_id", file, "annotation without image_id", int)
    name = f"image_id={image_id}"
    if image_id not in images:
        raise DataError("image_id not among the file's images", file, name)
    png_name = field(annotation, "file_name", file, name, str)
    segments: list[PanopticSegment] = []
    seen: set[int] = set()
    for info in field(annotation, "segments_info", file, name, list):
        segment_id = field(info, "id", file, name, int)
        segment_name = f"image_id={image_id} segment id={segment_id}"
        if segment_id in seen:
            raise DataError("segment id appears twice in segments_info", file, segment_name)
        seen.add(segment_id)
        category_id = field(info, "category_id", file, segment_name, int)
        if category_id not in categories:
            raise DataError(f"category_id {category_id} is not among the categories", file, segment_name)
        segments.append(
            PanopticSegment(
                id=segment_id,
                category_id=category_id,
                iscrowd=bool(info.get("iscrowd", 0)),
                bbox=bbox(info.get("bbox", [0, 0, 0, 0]), file, segment_name),
                area=int(optional_number(info, "area", 0, file, segment_name)),
            )
        )
    image = images[image_id]
    return PanopticRecord(image=image, png_path=png_root / png_name, segments=tuple(segments))
