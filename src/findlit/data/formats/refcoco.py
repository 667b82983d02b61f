"""Reader of RefCOCO / RefCOCO+ / RefCOCOg referring expressions, joined with COCO instances.

The official release is a pickle (``refs(<split_by>).p``). A pickle can run code when loaded,
so it is read with an unpickler that admits only plain containers, strings and numbers; the
same records as JSON (a list of refs) are read too.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from findlit.data.errors import BadRecords
from findlit.data.formats.instances import read_coco_instances
from findlit.data.formats.jsonfile import existing_path, field, load_json
from findlit.data.records import Dataset, InstanceAnnotation, InstancesRecord, Ref, RefsRecord
from findlit.errors import DataError

ABSENT_ANN_ID = -1
"""``ann_id`` of a ref that describes an object which is not in the image (rejection tests)."""


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles only the built-in containers and scalars, which never go through ``find_class``."""

    def __init__(self, file: io.BufferedReader, path: Path):
        # Python 2 pickles (the official RefCOCO release) store text as UTF-8 byte strings.
        super().__init__(file, encoding="utf-8")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        raise DataError(
            f"refusing to unpickle {module}.{name}: a refs pickle may only hold lists, dicts, strings "
            "and numbers (a pickle that names classes or functions can run code)",
            self._path,
        )

    def persistent_load(self, pid: Any) -> Any:
        raise DataError("refusing a pickle with persistent ids", self._path)


def load_refs_pickle(path: Path) -> Any:
    """Load a RefCOCO pickle with the restricted unpickler; any other object is a :class:`DataError`."""
    try:
        with path.open("rb") as handle:
            return _PlainUnpickler(handle, path).load()
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError("file not found", path) from None
    except Exception as error:  # a malformed opcode stream fails with many exception types
        raise DataError(f"corrupt or truncated pickle: {type(error).__name__}: {error}", path) from None


def read_refcoco(
    refs: str | Path,
    instances_json: str | Path,
    image_root: str | Path,
    split: str | Sequence[str] | None = None,
    *,
    absent: bool = False,
    bad_records: BadRecords | None = None,
    keys: Mapping[str, str] | None = None,
) -> Dataset:
    """Read refs (``.p`` pickle or ``.json``) and join each ``ann_id`` with the instances file.

    Args:
        refs: ``refs(unc).p`` / ``refs(umd).p`` / ``refs(google).p``, or a JSON list of the same records.
        instances_json: the COCO instances file that ``ann_id`` points into.
        image_root: folder of the images.
        split: keep refs of these splits (``"val"``, ``"testA"``...); None keeps all.
        absent: the refs describe objects that are NOT in their image (``ann_id`` = -1, no mask).
        bad_records: policy for per-record problems (default: raise on the first).
        keys: config key of each argument, for messages.

    Returns:
        A :class:`Dataset` of :class:`RefsRecord` (one per image) with the instances' categories.

    """
    keys = keys or {}
    bad_records = bad_records or BadRecords()
    key = keys.get("refs")
    refs_path = existing_path(refs, key)
    if refs_path.suffix == ".p" or refs_path.suffix == ".pkl":
        try:
            document = load_refs_pickle(refs_path)
        except DataError as error:
            raise error.with_key(key) from None
    else:
        document = load_json(refs_path, key)
    if not isinstance(document, list):
        raise DataError(f"expected a list of refs, got {type(document).__name__}", refs_path, key=key)
    instances = read_coco_instances(instances_json, image_root, bad_records=bad_records, keys=keys)
    images = {record.image.id: record for record in instances.records}
    annotations = {ann.id: (record, ann) for record in instances.records for ann in record.annotations}
    wanted = {split} if isinstance(split, str) else (set(split) if split is not None else None)

    per_image: dict[int, list[Ref]] = {}
    for entry in document:
        # The official pickles hold every split; refs of other splits may point into other instances files.
        if wanted is not None and isinstance(entry, Mapping) and entry.get("split") not in wanted:
            continue
        with bad_records.guard():
            try:
                image_id, ref = _ref(entry, refs_path, images, annotations, instances.categories, absent)
            except DataError as error:
                raise error.with_key(key) from None
            per_image.setdefault(image_id, []).append(ref)
    records = tuple(RefsRecord(images[i].image, tuple(image_refs)) for i, image_refs in per_image.items())
    files = {**instances.files, "refs": refs_path}
    return Dataset(records=records, categories=instances.categories, source=refs_path, files=files)


def _ref(
    entry: Any,
    file: Path,
    images: Mapping[int, InstancesRecord],
    annotations: Mapping[int, tuple[InstancesRecord, InstanceAnnotation]],
    categories: Mapping[int, Any],
    absent: bool,
) -> tuple[int, Ref]:
    ref_id = field(entry, "ref_id", file, "ref without ref_id", int)
    name = f"ref_id={ref_id}"
    image_id = field(entry, "image_id", file, name, int)
    ann_id = field(entry, "ann_id", file, name, int)
    category_id = field(entry, "category_id", file, name, int)
    split = field(entry, "split", file, name, str)
    if image_id not in images:
        raise DataError(f"image_id {image_id} is not in the instances file", file, name)
    if category_id not in categories:
        raise DataError(f"category_id {category_id} is not among the categories", file, name)
    annotation: InstanceAnnotation | None = None
    if absent:
        if ann_id != ABSENT_ANN_ID:
            raise DataError(f"an absent ref should have ann_id {ABSENT_ANN_ID}, got {ann_id}", file, name)
    else:
        if ann_id not in annotations:
            raise DataError(f"ann_id {ann_id} is not in the instances file", file, name)
        owner, annotation = annotations[ann_id]
        if owner.image.id != image_id:
            raise DataError(f"ann_id {ann_id} belongs to image {owner.image.id}, not {image_id}", file, name)
    sentences: list[str] = []
    for sentence in field(entry, "sentences", file, name, list):
        text = sentence.get("raw", sentence.get("sent")) if isinstance(sentence, Mapping) else None
        if not isinstance(text, str):
            raise DataError("a sentence needs a 'raw' or 'sent' string", file, name)
        if not text.strip():
            raise DataError(f"sentence {len(sentences)} is empty", file, name)
        sentences.append(text.strip())
    if not sentences:
        raise DataError("ref has no sentences", file, name)
    return image_id, Ref(ref_id, ann_id, category_id, split, tuple(sentences), annotation)
