"""Reader of COCO instances annotations (polygons, compressed and uncompressed RLE)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

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
from findlit.data.records import Category, Dataset, ImageInfo, InstanceAnnotation, InstancesRecord
from findlit.errors import DataError


def read_coco_instances(
    instances_json: str | Path,
    image_root: str | Path,
    *,
    bad_records: BadRecords | None = None,
    keys: Mapping[str, str] | None = None,
) -> Dataset:
    """Read a COCO instances JSON into one :class:`InstancesRecord` per image.

    Images without annotations are kept, with none.

    Segmentations are checked for shape here (polygon list, or RLE with ``size`` and ``counts``)
    and decoded later with pycocotools (:func:`findlit.data.masks.decode_instance`).
    """
    keys = keys or {}
    bad_records = bad_records or BadRecords()
    key = keys.get("instances_json")
    json_path = existing_path(instances_json, key)
    images_root = existing_path(image_root, keys.get("image_root"), kind="folder")
    document = load_json(json_path, key)
    categories = read_categories(document, json_path, key)
    images = read_images(document, json_path, images_root, key)

    per_image: dict[int, list[InstanceAnnotation]] = {image_id: [] for image_id in images}
    seen: set[int] = set()
    for entry in top_level_list(document, "annotations", json_path, key):
        with bad_records.guard():
            try:
                image_id, annotation = _annotation(entry, json_path, images, categories)
                if annotation.id in seen:
                    # refs point at annotations by id: a repeated id makes them ambiguous
                    raise DataError(
                        f"annotation id {annotation.id} is listed twice", json_path, f"ann_id={annotation.id}"
                    )
            except DataError as error:
                raise error.with_key(key) from None
            seen.add(annotation.id)
            per_image[image_id].append(annotation)
    records = tuple(InstancesRecord(images[i], tuple(anns)) for i, anns in per_image.items())
    files = {"instances_json": json_path, "image_root": images_root}
    return Dataset(records=records, categories=categories, source=json_path, files=files)


def _annotation(
    entry: Any, file: Path, images: Mapping[int, ImageInfo], categories: Mapping[int, Category]
) -> tuple[int, InstanceAnnotation]:
    ann_id = field(entry, "id", file, "annotation without id", int)
    name = f"ann_id={ann_id}"
    image_id = field(entry, "image_id", file, name, int)
    if image_id not in images:
        raise DataError(f"image_id {image_id} is not among the file's images", file, name)
    category_id = field(entry, "category_id", file, name, int)
    if category_id not in categories:
        raise DataError(f"category_id {category_id} is not among the categories", file, name)
    segmentation = field(entry, "segmentation", file, name, (list, dict))
    image = images[image_id]
    check_segmentation(segmentation, image.height, image.width, file, name)
    return image_id, InstanceAnnotation(
        id=ann_id,
        category_id=category_id,
        iscrowd=bool(entry.get("iscrowd", 0)),
        bbox=bbox(entry.get("bbox", [0, 0, 0, 0]), file, name),
        area=optional_number(entry, "area", 0.0, file, name),
        segmentation=segmentation,
    )


def check_segmentation(
    segmentation: Any, height: int | None, width: int | None, file: Path, name: str
) -> None:
    """Raise a :class:`DataError` unless ``segmentation`` is a polygon list or an RLE of the image's size."""
    if isinstance(segmentation, list):
        for polygon in segmentation:
            if not (isinstance(polygon, list) and len(polygon) >= 6 and len(polygon) % 2 == 0):
                raise DataError("a polygon should be a flat list of at least 3 x, y pairs", file, name)
            if not all(isinstance(v, int | float) for v in polygon):
                raise DataError("polygon coordinates should be numbers", file, name)
        return
    size = segmentation.get("size")
    counts = segmentation.get("counts")
    if not (isinstance(size, list) and len(size) == 2):
        raise DataError("RLE segmentation needs 'size': [height, width]", file, name)
    if height is not None and width is not None and list(size) != [height, width]:
        raise DataError(f"RLE size {size} differs from the image size [{height}, {width}]", file, name)
    if isinstance(counts, list):
        if any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in counts):
            raise DataError("uncompressed RLE counts should be non-negative integers", file, name)
        if not all(isinstance(v, int) for v in size) or sum(counts) != size[0] * size[1]:
            raise DataError("uncompressed RLE counts do not add up to height x width", file, name)
    elif not isinstance(counts, str | bytes):
        raise DataError("RLE 'counts' should be a string (compressed) or a list (uncompressed)", file, name)
