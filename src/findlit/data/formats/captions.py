"""Readers of image captions: the COCO captions JSON and the Karpathy split file."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from findlit.data.errors import BadRecords
from findlit.data.formats.jsonfile import existing_path, field, load_json, read_images, top_level_list
from findlit.data.records import CaptionsRecord, Dataset, ImageInfo
from findlit.errors import DataError


def read_coco_captions(
    captions_json: str | Path,
    image_root: str | Path,
    *,
    bad_records: BadRecords | None = None,
    keys: Mapping[str, str] | None = None,
) -> Dataset:
    """Read ``captions_<split>.json`` into one :class:`CaptionsRecord` per image that has captions."""
    keys = keys or {}
    bad_records = bad_records or BadRecords()
    key = keys.get("captions_json")
    json_path = existing_path(captions_json, key)
    images_root = existing_path(image_root, keys.get("image_root"), kind="folder")
    document = load_json(json_path, key)
    images = read_images(document, json_path, images_root, key)
    captions: dict[int, list[str]] = {}
    for entry in top_level_list(document, "annotations", json_path, key):
        with bad_records.guard():
            try:
                ann_name = f"ann_id={entry.get('id') if isinstance(entry, Mapping) else '?'}"
                image_id = field(entry, "image_id", json_path, ann_name, int)
                if image_id not in images:
                    raise DataError(
                        f"image_id {image_id} is not among the file's images", json_path, ann_name
                    )
                text = field(entry, "caption", json_path, ann_name, str).strip()
                if not text:
                    raise DataError("caption is empty", json_path, ann_name)
            except DataError as error:
                raise error.with_key(key) from None
            captions.setdefault(image_id, []).append(text)
    records = tuple(CaptionsRecord(images[i], tuple(texts)) for i, texts in captions.items())
    return Dataset(
        records=records, source=json_path, files={"captions_json": json_path, "image_root": images_root}
    )


def read_karpathy(
    karpathy_json: str | Path,
    image_root: str | Path,
    split: str | Sequence[str] | None = None,
    *,
    bad_records: BadRecords | None = None,
    keys: Mapping[str, str] | None = None,
) -> Dataset:
    """Read a Karpathy split file (``dataset_coco.json``) into :class:`CaptionsRecord` objects.

    Args:
        karpathy_json: the split file: ``images[].{filename, filepath, split, cocoid, sentences[].raw}``.
        image_root: the COCO root; an image is at ``image_root/filepath/filename``.
        split: keep only these splits, e.g. ``"test"`` or ``["train", "restval"]``; None keeps all.
        bad_records: policy for per-record problems (default: raise on the first).
        keys: config key of each argument, for messages.

    """
    keys = keys or {}
    bad_records = bad_records or BadRecords()
    key = keys.get("karpathy_json")
    json_path = existing_path(karpathy_json, key)
    images_root = existing_path(image_root, keys.get("image_root"), kind="folder")
    wanted = {split} if isinstance(split, str) else (set(split) if split is not None else None)
    document = load_json(json_path, key)
    records: list[CaptionsRecord] = []
    for entry in top_level_list(document, "images", json_path, key):
        with bad_records.guard():
            try:
                record = _karpathy_record(entry, json_path, images_root)
            except DataError as error:
                raise error.with_key(key) from None
            if wanted is None or record.split in wanted:
                records.append(record)
    files = {"karpathy_json": json_path, "image_root": images_root}
    return Dataset(records=tuple(records), source=json_path, files=files)


def _karpathy_record(entry: object, file: Path, image_root: Path) -> CaptionsRecord:
    image_id = field(entry, "cocoid", file, "image without cocoid", int)
    name = f"cocoid={image_id}"
    filename = field(entry, "filename", file, name, str)
    filepath = field(entry, "filepath", file, name, str)
    split = field(entry, "split", file, name, str)
    texts: list[str] = []
    for sentence in field(entry, "sentences", file, name, list):
        text = field(sentence, "raw", file, name, str).strip()
        if not text:
            raise DataError(f"sentence {len(texts)} is empty", file, name)
        texts.append(text)
    image = ImageInfo(id=image_id, path=image_root / filepath / filename, height=None, width=None)
    return CaptionsRecord(image=image, captions=tuple(texts), split=split)
