"""Loading annotation JSON files and reading their fields with errors that name file and record."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from findlit.data.records import Category, ImageInfo
from findlit.errors import DataError


def existing_path(path: str | Path | None, key: str | None, *, kind: str = "file") -> Path:
    """Return ``path`` as a Path, or raise :class:`DataError` naming ``key`` if it is unset or missing."""
    if path is None or str(path) == "":
        raise DataError(f"no {kind} given", None, key=key)
    resolved = Path(path).expanduser()
    if kind == "folder":
        if not resolved.is_dir():
            raise DataError("folder not found", resolved, key=key)
    elif not resolved.is_file():
        raise DataError("file not found", resolved, key=key)
    return resolved


def load_json(path: str | Path | None, key: str | None) -> Any:
    """Parse a JSON file; a missing file or malformed JSON is a :class:`DataError` naming the file."""
    resolved = existing_path(path, key)
    try:
        with resolved.open("rb") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise DataError(
            f"malformed JSON at line {error.lineno} column {error.colno}: {error.msg}", resolved, key=key
        ) from None
    except UnicodeDecodeError as error:
        raise DataError(f"not UTF-8 text: {error.reason}", resolved, key=key) from None


def field(
    record: Any, name: str, file: Path, record_name: str, expected: type | tuple[type, ...] = object
) -> Any:
    """``record[name]`` checked for presence and type; else a :class:`DataError` naming file and record."""
    if not isinstance(record, Mapping):
        raise DataError(f"expected an object, got {type(record).__name__}", file, record_name)
    if name not in record:
        raise DataError(f"missing required key '{name}'", file, record_name)
    value = record[name]
    # bool is an int subclass; a JSON true where an id is expected is still an error.
    if expected is not object and (
        not isinstance(value, expected) or (isinstance(value, bool) and bool not in _as_tuple(expected))
    ):
        raise DataError(
            f"key '{name}' should be {_type_names(expected)}, got {type(value).__name__}", file, record_name
        )
    return value


def top_level_list(document: Any, name: str, file: Path, key: str | None) -> list[Any]:
    """``document[name]`` as a list, or a whole-file :class:`DataError`."""
    if not isinstance(document, Mapping):
        raise DataError(f"expected a JSON object at top level, got {type(document).__name__}", file, key=key)
    if name not in document:
        raise DataError(f"missing top-level key '{name}'", file, key=key)
    value = document[name]
    if not isinstance(value, list):
        raise DataError(f"top-level key '{name}' should be a list", file, key=key)
    return value


def read_categories(document: Any, file: Path, key: str | None) -> dict[int, Category]:
    """The ``categories`` list of a COCO file as id -> :class:`Category` (``isthing`` defaults to True)."""
    categories: dict[int, Category] = {}
    for entry in top_level_list(document, "categories", file, key):
        name = f"category_id={entry.get('id') if isinstance(entry, Mapping) else '?'}"
        try:
            category_id = field(entry, "id", file, name, int)
            if category_id in categories:
                raise DataError(f"category id {category_id} is listed twice", file, name)
            category_name = field(entry, "name", file, name, str)
            if not category_name.strip():
                # the name is the class prompt: an empty one would be an empty text query
                raise DataError("category name is empty", file, name)
            categories[category_id] = Category(
                id=category_id,
                name=category_name,
                isthing=bool(entry.get("isthing", 1)),
                supercategory=str(entry.get("supercategory", "")),
            )
        except DataError as error:
            raise error.with_key(key) from None
    return categories


def read_images(document: Any, file: Path, image_root: Path, key: str | None) -> dict[int, ImageInfo]:
    """The ``images`` list of a COCO file as id -> :class:`ImageInfo` with paths under ``image_root``."""
    images: dict[int, ImageInfo] = {}
    for entry in top_level_list(document, "images", file, key):
        name = f"image_id={entry.get('id') if isinstance(entry, Mapping) else '?'}"
        try:
            image_id = field(entry, "id", file, name, int)
            if image_id in images:
                raise DataError(f"image id {image_id} is listed twice", file, name)
            file_name = field(entry, "file_name", file, name, str)
            if not file_name.strip():
                raise DataError("file_name is empty", file, name)
            height = field(entry, "height", file, name, int)
            width = field(entry, "width", file, name, int)
            if height <= 0 or width <= 0:
                raise DataError(f"image size {height}x{width} is not positive", file, name)
            images[image_id] = ImageInfo(id=image_id, path=image_root / file_name, height=height, width=width)
        except DataError as error:
            raise error.with_key(key) from None
    return images


def optional_number(
    record: Mapping[str, Any], name: str, default: float, file: Path, record_name: str
) -> float:
    """``record[name]`` as a number (``default`` when absent); a non-number is a :class:`DataError`."""
    value = record.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DataError(f"key '{name}' should be a number, got {value!r}", file, record_name)
    return float(value)


def bbox(value: Any, file: Path, record_name: str) -> tuple[float, float, float, float]:
    """A COCO ``[x, y, w, h]`` box as a tuple of four floats."""
    if not (
        isinstance(value, list | tuple) and len(value) == 4 and all(isinstance(v, int | float) for v in value)
    ):
        raise DataError(f"bbox should be [x, y, w, h], got {value!r}", file, record_name)
    if value[2] < 0 or value[3] < 0:
        raise DataError(f"bbox {list(value)} has a negative width or height", file, record_name)
    return (float(value[0]), float(value[1]), float(value[2]), float(value[3]))


def _as_tuple(expected: type | tuple[type, ...]) -> tuple[type, ...]:
    return expected if isinstance(expected, tuple) else (expected,)


def _type_names(expected: type | tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in _as_tuple(expected))
