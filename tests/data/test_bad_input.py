"""Every kind of bad input gets an error naming the file, the record and the config key.

Each test copies the real COCO sample (``tests/data/coco_sample``) into ``tmp_path``,
corrupts one thing in its copy, and reads it the way training does
(:func:`findlit.data.config.build_dataset`, then ``dataset[i]`` for what is only found when
decoding pixels) or the way ``findlit data check`` does.
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import random
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from findlit.cli import main
from findlit.cli.config import build_datamodule
from findlit.data.config import DatasetConfig, DatasetPaths, build_dataset, read_records
from findlit.data.datasets import TaskDataset
from findlit.errors import ConfigError, DataError
from tests.fixtures import COCO_SAMPLE, REPO, copy_sample

SAMPLE = COCO_SAMPLE


KEY = "data.val[0]"
IMAGE_A, IMAGE_B = 142238, 439180
JPEG_A = "000000142238.jpg"
PNG_A = "000000142238.png"

PANOPTIC_JSON = "annotations/panoptic_val2017.json"
INSTANCES_JSON = "annotations/panoptic_detection_format_val2017.json"
CAPTIONS_JSON = "annotations/captions_val2017.json"
REFS_PICKLE = "annotations/refs(umd).p"
REFS_JSON = "annotations/refs_val2017.json"
ENTITY_JSON = "annotations/entity_val2017.json"

# format -> (task, paths), as in configs/coco_sample.yaml (relative to the sample's root).
FORMATS: dict[str, tuple[str, dict[str, str]]] = {
    "coco_panoptic": (
        "segmentation",
        {"panoptic_json": PANOPTIC_JSON, "panoptic_root": "panoptic_val2017", "image_root": "val2017"},
    ),
    "coco_instances": ("segmentation", {"instances_json": INSTANCES_JSON, "image_root": "val2017"}),
    "coco_captions": ("retrieval", {"captions_json": CAPTIONS_JSON, "image_root": "val2017"}),
    "refcoco": (
        "grounding",
        {"refs": REFS_PICKLE, "instances_json": INSTANCES_JSON, "image_root": "val2017", "split": "val"},
    ),
    "find_entity": (
        "interleave",
        {
            "entity_json": ENTITY_JSON,
            "panoptic_json": PANOPTIC_JSON,
            "panoptic_root": "panoptic_val2017",
            "image_root": "val2017",
        },
    ),
}


# ---------------------------------------------------------------------------------------------------
# helpers


def edit_json(root: Path, relative: str, change: Callable[[Any], None]) -> Path:
    """Load ``root/relative``, let ``change`` modify it in place, write it back."""
    path = root / relative
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))
    return path


def edit_refs_pickle(root: Path, change: Callable[[Any], None]) -> Path:
    """Same as :func:`edit_json` for the refs pickle (it holds plain containers only)."""
    path = root / REFS_PICKLE
    with path.open("rb") as handle:
        document = pickle.load(handle)
    change(document)
    path.write_bytes(pickle.dumps(document, protocol=2))
    return path


def dataset_config(fmt: str, **paths: str | None) -> DatasetConfig:
    """The sample's config for ``fmt``; ``paths`` override (None removes) entries."""
    task, default_paths = FORMATS[fmt]
    merged = {**default_paths, **paths}
    return DatasetConfig(
        name=f"sample_{fmt}",
        task=task,  # type: ignore[arg-type]
        format=fmt,  # type: ignore[arg-type]
        paths=DatasetPaths(**{k: v for k, v in merged.items() if v is not None}),
    )


def build(root: Path, fmt: str, on_bad_record: str = "error", **paths: str | None) -> TaskDataset:
    return build_dataset(
        dataset_config(fmt, **paths),
        KEY,
        train=False,
        root=root,
        on_bad_record=on_bad_record,  # type: ignore[arg-type]
    )


def assert_names(error: BaseException | str, *parts: str) -> None:
    """Every one of ``parts`` appears in the message."""
    message = str(error)
    for part in parts:
        assert part in message, f"{part!r} not in message: {message}"


def user_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    """Messages of the UserWarnings among ``caught`` (libraries may add DeprecationWarnings)."""
    return [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def decode_all(dataset: TaskDataset) -> None:
    for index in range(len(dataset)):
        dataset[index]


def _segments(document: Any, image_id: int) -> list[dict[str, Any]]:
    """``segments_info`` of ``image_id`` in a panoptic JSON."""
    return next(a for a in document["annotations"] if a["image_id"] == image_id)["segments_info"]


def segment(document: Any, image_id: int, position: int = 0) -> dict[str, Any]:
    """``segments_info[position]`` of ``image_id`` in a panoptic JSON."""
    return _segments(document, image_id)[position]


def _drop_segment_at(image_id: int, position: int) -> Callable[[Any], None]:
    def change(d: Any) -> None:
        _segments(d, image_id).pop(position)

    return change


def first_segment_id(root: Path, image_id: int = IMAGE_A) -> int:
    document = json.loads((root / PANOPTIC_JSON).read_text())
    return int(segment(document, image_id)["id"])


# ---------------------------------------------------------------------------------------------------
# the sample itself is fine


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_clean_sample_reads_and_decodes(tmp_path: Path, fmt: str) -> None:
    root = copy_sample(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        dataset = build(root, fmt)
        decode_all(dataset)
    assert len(dataset) == 2


# ---------------------------------------------------------------------------------------------------
# missing files and folders


@pytest.mark.parametrize(
    ("fmt", "field", "relative"),
    [
        ("coco_panoptic", "panoptic_json", PANOPTIC_JSON),
        ("coco_instances", "instances_json", INSTANCES_JSON),
        ("coco_captions", "captions_json", CAPTIONS_JSON),
        ("refcoco", "refs", REFS_PICKLE),
        ("refcoco", "instances_json", INSTANCES_JSON),
        ("find_entity", "entity_json", ENTITY_JSON),
        ("find_entity", "panoptic_json", PANOPTIC_JSON),
    ],
)
def test_missing_annotation_file(tmp_path: Path, fmt: str, field: str, relative: str) -> None:
    root = copy_sample(tmp_path)
    (root / relative).unlink()
    with pytest.raises(DataError) as caught:
        build(root, fmt)
    assert_names(caught.value, "file not found", Path(relative).name, f"{KEY}.paths.{field}")
    assert caught.value.key == f"{KEY}.paths.{field}"
    assert caught.value.file == str(root / relative)


@pytest.mark.parametrize(
    ("fmt", "field", "folder"),
    [
        ("coco_panoptic", "panoptic_root", "panoptic_val2017"),
        ("coco_panoptic", "image_root", "val2017"),
        ("coco_instances", "image_root", "val2017"),
        ("coco_captions", "image_root", "val2017"),
        ("refcoco", "image_root", "val2017"),
        ("find_entity", "panoptic_root", "panoptic_val2017"),
    ],
)
def test_missing_folder(tmp_path: Path, fmt: str, field: str, folder: str) -> None:
    root = copy_sample(tmp_path)
    shutil.rmtree(root / folder)
    with pytest.raises(DataError) as caught:
        build(root, fmt)
    assert_names(caught.value, "folder not found", folder, f"{KEY}.paths.{field}")
    assert caught.value.file == str(root / folder)


@pytest.mark.parametrize(
    ("fmt", "relative"),
    [
        ("coco_panoptic", f"val2017/{JPEG_A}"),
        ("coco_panoptic", f"panoptic_val2017/{PNG_A}"),
        ("coco_instances", f"val2017/{JPEG_A}"),
        ("coco_captions", f"val2017/{JPEG_A}"),
        ("refcoco", f"val2017/{JPEG_A}"),
        ("find_entity", f"panoptic_val2017/{PNG_A}"),
    ],
)
def test_missing_image_file_found_at_decode(tmp_path: Path, fmt: str, relative: str) -> None:
    root = copy_sample(tmp_path)
    (root / relative).unlink()
    dataset = build(root, fmt)  # reading the annotations does not open the pixels
    assert len(dataset) == 2
    with pytest.raises(DataError) as caught:
        dataset[0]
    assert_names(caught.value, "not found", Path(relative).name, f"image_id={IMAGE_A}", KEY)
    assert dataset[1]["image_id"] == IMAGE_B


# ---------------------------------------------------------------------------------------------------
# malformed JSON


@pytest.mark.parametrize(
    ("fmt", "field", "relative"),
    [
        ("coco_panoptic", "panoptic_json", PANOPTIC_JSON),
        ("coco_instances", "instances_json", INSTANCES_JSON),
        ("coco_captions", "captions_json", CAPTIONS_JSON),
        ("refcoco", "refs", REFS_JSON),
        ("find_entity", "entity_json", ENTITY_JSON),
    ],
)
def test_malformed_json(tmp_path: Path, fmt: str, field: str, relative: str) -> None:
    root = copy_sample(tmp_path)
    path = root / relative
    text = path.read_bytes()
    path.write_bytes(text[: len(text) // 2])
    with pytest.raises(DataError) as caught:
        build(root, fmt, **{field: relative})
    assert_names(caught.value, "malformed JSON", path.name, f"{KEY}.paths.{field}")


def test_json_that_is_not_utf8(tmp_path: Path) -> None:
    root = copy_sample(tmp_path)
    (root / CAPTIONS_JSON).write_bytes(b'{"images": [], "annotations": ["\xff\xfe"]}')
    with pytest.raises(DataError) as caught:
        build(root, "coco_captions")
    assert_names(caught.value, "captions_val2017.json", f"{KEY}.paths.captions_json")


def test_json_without_top_level_list(tmp_path: Path) -> None:
    root = copy_sample(tmp_path)
    edit_json(root, PANOPTIC_JSON, lambda d: d.pop("annotations"))
    with pytest.raises(DataError) as caught:
        build(root, "coco_panoptic")
    assert_names(caught.value, "'annotations'", "panoptic_val2017.json", f"{KEY}.paths.panoptic_json")


# ---------------------------------------------------------------------------------------------------
# a record without a required key


def _drop_segment_category(d: Any) -> None:
    segment(d, IMAGE_A).pop("category_id")


def _drop_instance_segmentation(d: Any) -> None:
    d["annotations"][0].pop("segmentation")


def _drop_caption(d: Any) -> None:
    d["annotations"][0].pop("caption")


def _drop_ref_ann_id(d: Any) -> None:
    d[0].pop("ann_id")


def _drop_phrase_start(d: Any) -> None:
    d["annotations"][0]["phrase"][0].pop("start_idx")


@pytest.mark.parametrize(
    ("fmt", "field", "relative", "change", "missing", "record"),
    [
        pytest.param(
            "coco_panoptic",
            "panoptic_json",
            PANOPTIC_JSON,
            _drop_segment_category,
            "category_id",
            f"image_id={IMAGE_A} segment id=",
            id="panoptic-segment-without-category_id",
        ),
        pytest.param(
            "coco_instances",
            "instances_json",
            INSTANCES_JSON,
            _drop_instance_segmentation,
            "segmentation",
            "ann_id=0",
            id="instances-annotation-without-segmentation",
        ),
        pytest.param(
            "coco_captions",
            "captions_json",
            CAPTIONS_JSON,
            _drop_caption,
            "caption",
            "ann_id=1",
            id="caption-without-caption",
        ),
        pytest.param(
            "refcoco", "refs", REFS_JSON, _drop_ref_ann_id, "ann_id", "ref_id=0", id="ref-without-ann_id"
        ),
        pytest.param(
            "find_entity",
            "entity_json",
            ENTITY_JSON,
            _drop_phrase_start,
            "start_idx",
            "entity id=0",
            id="entity-phrase-without-start_idx",
        ),
    ],
)
def test_record_without_required_key(
    tmp_path: Path,
    fmt: str,
    field: str,
    relative: str,
    change: Callable[[Any], None],
    missing: str,
    record: str,
) -> None:
    root = copy_sample(tmp_path)
    edit_json(root, relative, change)
    with pytest.raises(DataError) as caught:
        build(root, fmt, **{field: relative})
    assert_names(
        caught.value, f"missing required key '{missing}'", Path(relative).name, record, f"{KEY}.paths.{field}"
    )


def test_ref_without_ann_id_in_pickle(tmp_path: Path) -> None:
    root = copy_sample(tmp_path)
    edit_refs_pickle(root, _drop_ref_ann_id)
    with pytest.raises(DataError) as caught:
        build(root, "refcoco")
    assert_names(
        caught.value, "missing required key 'ann_id'", "refs(umd).p", "ref_id=0", f"{KEY}.paths.refs"
    )


def test_entity_phrase_error_names_image_and_phrase(tmp_path: Path) -> None:
    root = copy_sample(tmp_path)
    edit_json(root, ENTITY_JSON, lambda d: d["annotations"][1]["phrase"][2].pop("annotation_id"))
    with pytest.raises(DataError) as caught:
        build(root, "find_entity")
    assert_names(caught.value, "entity id=1", f"image_id={IMAGE_B}", "phrase 2", f"{KEY}.paths.entity_json")


# ---------------------------------------------------------------------------------------------------
# a category id not among the categories


def _panoptic_unknown_category(d: Any) -> None:
    segment(d, IMAGE_A)["category_id"] = 9999


def _instance_unknown_category(d: Any) -> None:
    d["annotations"][0]["category_id"] = 9999


def _ref_unknown_category(d: Any) -> None:
    d[0]["category_id"] = 9999


@pytest.mark.parametrize(
    ("fmt", "field", "relative", "change", "record"),
    [
        ("coco_panoptic", "panoptic_json", PANOPTIC_JSON, _panoptic_unknown_category, f"image_id={IMAGE_A}"),
        ("coco_instances", "instances_json", INSTANCES_JSON, _instance_unknown_category, "ann_id=0"),
        ("refcoco", "refs", REFS_JSON, _ref_unknown_category, "ref_id=0"),
        ("find_entity", "panoptic_json", PANOPTIC_JSON, _panoptic_unknown_category, f"image_id={IMAGE_A}"),
    ],
)
def test_category_not_among_categories(
    tmp_path: Path, fmt: str, field: str, relative: str, change: Callable[[Any], None], record: str
) -> None:
    root = copy_sample(tmp_path)
    edit_json(root, relative, change)
    with pytest.raises(DataError) as caught:
        build(root, fmt, **{field: relative})
    assert_names(
        caught.value,
        "category_id 9999 is not among the categories",
        Path(relative).name,
        record,
        f"{KEY}.paths.{field}",
    )


def test_panoptic_unknown_category_names_the_segment(tmp_path: Path) -> None:
    root = copy_sample(tmp_path)
    segment_id = first_segment_id(root)
    edit_json(root, PANOPTIC_JSON, _panoptic_unknown_category)
    with pytest.raises(DataError) as caught:
        build(root, "coco_panoptic")
    assert caught.value.record == f"image_id={IMAGE_A} segment id={segment_id}"


# ---------------------------------------------------------------------------------------------------
# panoptic PNG ids vs segments_info (found when decoding)


@pytest.mark.parametrize("fmt", ["coco_panoptic", "find_entity"])
def test_png_segment_absent_from_json(tmp_path: Path, fmt: str) -> None:
    root = copy_sample(tmp_path)
    segment_id = first_segment_id(root)  # a person, named by no entity phrase
    edit_json(root, PANOPTIC_JSON, _drop_segment_at(IMAGE_A, 0))
    dataset = build(root, fmt)
    with pytest.raises(DataError) as caught:
        dataset[0]
    assert_names(
        caught.value,
        f"[{segment_id}] in the PNG are absent from segments_info",
        PNG_A,
        f"image_id={IMAGE_A}",
        KEY,
    )
    assert caught.value.file == str(root / "panoptic_val2017" / PNG_A)
    assert dataset[1]["image_id"] == IMAGE_B


@pytest.mark.parametrize("fmt", ["coco_panoptic", "find_entity"])
def test_json_segment_absent_from_png(tmp_path: Path, fmt: str) -> None:
    root = copy_sample(tmp_path)
    extra = {"id": 1, "category_id": 1, "iscrowd": 0, "bbox": [0, 0, 1, 1], "area": 1}  # id 1 = RGB (1, 0, 0)
    edit_json(root, PANOPTIC_JSON, lambda d: _segments(d, IMAGE_A).append(extra))
    dataset = build(root, fmt)
    with pytest.raises(DataError) as caught:
        dataset[0]
    assert_names(
        caught.value, "[1] of segments_info are absent from the PNG", PNG_A, f"image_id={IMAGE_A}", KEY
    )


def test_duplicate_segment_id(tmp_path: Path) -> None:
    root = copy_sample(tmp_path)
    edit_json(root, PANOPTIC_JSON, lambda d: _segments(d, IMAGE_B).append(dict(_segments(d, IMAGE_B)[0])))
    with pytest.raises(DataError) as caught:
        build(root, "coco_panoptic")
    assert_names(
        caught.value,
        "appears twice",
        "panoptic_val2017.json",
        f"image_id={IMAGE_B}",
        f"{KEY}.paths.panoptic_json",
    )


# ---------------------------------------------------------------------------------------------------
# a phrase span that does not match its sentence


@pytest.mark.parametrize(
    ("start", "end"),
    [(1, 12), (0, 11), (0, 999), (-1, 12), (12, 0)],
    ids=["shifted", "short", "past-end", "negative", "reversed"],
)
def test_phrase_span_mismatch(tmp_path: Path, start: int, end: int) -> None:
    root = copy_sample(tmp_path)

    def change(d: Any) -> None:
        phrase = d["annotations"][0]["phrase"][0]  # "A rugby ball" = sentence[0:12]
        phrase["start_idx"], phrase["end_idx"] = start, end

    edit_json(root, ENTITY_JSON, change)
    with pytest.raises(DataError) as caught:
        build(root, "find_entity")
    assert_names(
        caught.value,
        f"phrase span [{start}:{end}]",
        "'A rugby ball'",
        "entity_val2017.json",
        "entity id=0",
        f"image_id={IMAGE_A}",
        "phrase 0",
        f"{KEY}.paths.entity_json",
    )


def test_phrase_naming_a_segment_of_another_image(tmp_path: Path) -> None:
    root = copy_sample(tmp_path)
    other = first_segment_id(root, IMAGE_B)
    edit_json(root, ENTITY_JSON, lambda d: d["annotations"][0]["phrase"][0].update(annotation_id=other + 1))
    with pytest.raises(DataError) as caught:
        build(root, "find_entity")
    assert_names(caught.value, f"annotation_id {other + 1}", "entity id=0", f"{KEY}.paths.entity_json")


# ---------------------------------------------------------------------------------------------------
# corrupt or truncated images


def _random_bytes(path: Path) -> None:
    path.write_bytes(random.Random(0).randbytes(path.stat().st_size))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


CORRUPTIONS = {"random-bytes": _random_bytes, "truncated": _truncate}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_corrupt_image(tmp_path: Path, fmt: str, corruption: str) -> None:
    root = copy_sample(tmp_path)
    CORRUPTIONS[corruption](root / "val2017" / JPEG_A)
    dataset = build(root, fmt)
    with pytest.raises(DataError) as caught:
        dataset[0]
    assert_names(caught.value, "corrupt or truncated image", JPEG_A, f"image_id={IMAGE_A}", KEY)
    assert caught.value.file == str(root / "val2017" / JPEG_A)
    assert dataset[1]["image_id"] == IMAGE_B


def test_corrupt_reference_image_leaves_the_referring_record_whole(tmp_path: Path) -> None:
    """Image B's "the grass" refers to a segment of image A: A's corrupt JPEG costs B only that reference."""
    root = copy_sample(tmp_path)
    _random_bytes(root / "val2017" / JPEG_A)
    dataset = build(root, "find_entity")
    with pytest.warns(UserWarning, match="a reference skipped") as caught:
        sample = dataset[1]
    message = str(caught[0].message)
    assert_names(message, "corrupt or truncated image", JPEG_A, f"image_id={IMAGE_A}", KEY)
    assert sample["image_id"] == IMAGE_B
    assert [ref is None for ref in sample["reference_images"]] == [True, True, True]


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
@pytest.mark.parametrize("fmt", ["coco_panoptic", "find_entity"])
def test_corrupt_panoptic_png(tmp_path: Path, fmt: str, corruption: str) -> None:
    root = copy_sample(tmp_path)
    CORRUPTIONS[corruption](root / "panoptic_val2017" / PNG_A)
    dataset = build(root, fmt)
    with pytest.raises(DataError) as caught:
        dataset[0]
    assert_names(caught.value, "corrupt or truncated image", PNG_A, f"image_id={IMAGE_A}", KEY)


def test_image_of_another_size_than_annotated(tmp_path: Path) -> None:
    root = copy_sample(tmp_path)
    shutil.copyfile(root / "val2017" / "000000439180.jpg", root / "val2017" / JPEG_A)  # 360x640, not 427x640
    dataset = build(root, "coco_panoptic")
    with pytest.raises(DataError) as caught:
        dataset[0]
    assert_names(caught.value, "360x640", "427x640", JPEG_A, f"image_id={IMAGE_A}", KEY)


# ---------------------------------------------------------------------------------------------------
# refs: restricted pickle, ann_id join


class _Plain:
    """An ordinary class: a pickle of it names the class, which the refs reader must refuse."""

    def __init__(self) -> None:
        self.ref_id = 0


class _RunsCode:
    """Unpickling this would call ``os.system(command)``."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (self.command,))


@pytest.mark.parametrize("payload", ["ordered-dict", "class-instance", "os-system"])
def test_refs_pickle_with_more_than_plain_containers_is_refused(tmp_path: Path, payload: str) -> None:
    root = copy_sample(tmp_path)
    marker = tmp_path / "pwned"
    objects = {
        "ordered-dict": lambda: [collections.OrderedDict(ref_id=0)],
        "class-instance": lambda: [_Plain()],
        "os-system": lambda: [_RunsCode(f"echo pwned > {marker}")],
    }
    (root / REFS_PICKLE).write_bytes(pickle.dumps(objects[payload](), protocol=2))
    with pytest.raises(DataError) as caught:
        build(root, "refcoco")
    assert_names(caught.value, "refusing to unpickle", "refs(umd).p", f"{KEY}.paths.refs")
    assert caught.value.file == str(root / REFS_PICKLE)
    assert not marker.exists(), "the pickle ran code"


def test_refs_pickle_truncated(tmp_path: Path) -> None:
    root = copy_sample(tmp_path)
    _truncate(root / REFS_PICKLE)
    with pytest.raises(DataError) as caught:
        build(root, "refcoco")
    assert_names(caught.value, "corrupt or truncated pickle", "refs(umd).p", f"{KEY}.paths.refs")


@pytest.mark.parametrize(
    "data",
    [b"\x80\x02K\x01K\x02K\x03s.", b"\x80\x02K\x01K\x02a.", b"\x80\x02}K\x01a."],
    ids=["setitem-on-int", "append-to-int", "append-to-dict"],
)
def test_refs_pickle_structurally_corrupt(tmp_path: Path, data: bytes) -> None:
    root = copy_sample(tmp_path)
    (root / REFS_PICKLE).write_bytes(data)
    with pytest.raises(DataError) as caught:
        build(root, "refcoco")
    assert_names(caught.value, "refs(umd).p", f"{KEY}.paths.refs")


def test_refs_not_a_list(tmp_path: Path) -> None:
    root = copy_sample(tmp_path)
    (root / REFS_PICKLE).write_bytes(pickle.dumps({"refs": []}, protocol=2))
    with pytest.raises(DataError) as caught:
        build(root, "refcoco")
    assert_names(caught.value, "expected a list of refs", "refs(umd).p", f"{KEY}.paths.refs")


@pytest.mark.parametrize("relative", [REFS_PICKLE, REFS_JSON])
def test_ref_ann_id_not_in_instances(tmp_path: Path, relative: str) -> None:
    root = copy_sample(tmp_path)

    def change(d: Any) -> None:
        d[2]["ann_id"] = 99999

    if relative == REFS_PICKLE:
        edit_refs_pickle(root, change)
    else:
        edit_json(root, relative, change)
    with pytest.raises(DataError) as caught:
        build(root, "refcoco", refs=relative)
    assert_names(
        caught.value,
        "ann_id 99999 is not in the instances file",
        Path(relative).name,
        "ref_id=2",
        f"{KEY}.paths.refs",
    )


def test_ref_ann_id_of_another_image(tmp_path: Path) -> None:
    root = copy_sample(tmp_path)
    edit_json(root, REFS_JSON, lambda d: d[3].update(ann_id=d[0]["ann_id"]))  # ref 3 is on the other image
    with pytest.raises(DataError) as caught:
        build(root, "refcoco", refs=REFS_JSON)
    assert_names(
        caught.value, f"belongs to image {IMAGE_A}", "refs_val2017.json", "ref_id=3", f"{KEY}.paths.refs"
    )


# ---------------------------------------------------------------------------------------------------
# config keys


def _data_section(root: Path, **paths: Any) -> dict[str, Any]:
    task, default_paths = FORMATS["coco_panoptic"]
    return {
        "root": str(root),
        "val": [{"name": "p", "task": task, "format": "coco_panoptic", "paths": {**default_paths, **paths}}],
    }


def test_wrong_config_key_is_named(tmp_path: Path) -> None:
    root = copy_sample(tmp_path)
    data = _data_section(root)
    data["val"][0]["paths"]["image_rot"] = data["val"][0]["paths"].pop("image_root")
    with pytest.raises(ConfigError, match="image_rot"):
        build_datamodule(data)


def test_wrong_top_level_data_key_is_named(tmp_path: Path) -> None:
    data = _data_section(copy_sample(tmp_path))
    data["vall"] = data.pop("val")
    with pytest.raises(ConfigError, match="vall"):
        build_datamodule(data)


def test_missing_required_path_is_named(tmp_path: Path) -> None:
    root = copy_sample(tmp_path)
    with pytest.raises(ConfigError, match=r"data\.val\[0\]\.paths\.panoptic_root is required"):
        read_records(dataset_config("coco_panoptic", panoptic_root=None), KEY, root)
    data = _data_section(root)
    del data["val"][0]["paths"]["panoptic_root"]
    datamodule = build_datamodule(data)
    with pytest.raises(ConfigError, match=r"data\.val\[0\]\.paths\.panoptic_root"):
        datamodule.stage_datasets("val")


def test_unknown_bad_record_policy(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="on_bad_record"):
        build(copy_sample(tmp_path), "coco_panoptic", on_bad_record="ignore")


# ---------------------------------------------------------------------------------------------------
# on_bad_record: skip


def _bad_category_in(*image_ids: int) -> Callable[[Any], None]:
    def change(d: Any) -> None:
        for image_id in image_ids:
            segment(d, image_id)["category_id"] = 9999

    return change


def test_skip_drops_the_bad_record_with_one_warning(tmp_path: Path) -> None:
    root = copy_sample(tmp_path)
    edit_json(root, PANOPTIC_JSON, _bad_category_in(IMAGE_A))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = build(root, "coco_panoptic", on_bad_record="skip")
        sample = dataset[0]
    assert len(dataset) == 1
    assert sample["image_id"] == IMAGE_B
    messages = user_warnings(caught)
    assert len(messages) == 1, messages
    assert_names(
        messages[0],
        "sample_coco_panoptic",
        "skipped 1 bad record",
        "panoptic_val2017.json",
        f"image_id={IMAGE_A}",
        f"{KEY}.paths.panoptic_json",
    )


def test_skip_warns_once_for_several_bad_records(tmp_path: Path) -> None:
    root = copy_sample(tmp_path)
    edit_json(root, PANOPTIC_JSON, _bad_category_in(IMAGE_A, IMAGE_B))
    # every record bad: no dataset of nothing, but one error that counts them and shows the first
    expected = r"no usable records in this file \(all 2 were bad records; the first: "
    with pytest.raises(DataError, match=expected):
        build(root, "coco_panoptic", on_bad_record="skip")


@pytest.mark.parametrize(
    ("fmt", "relative", "change", "check"),
    [
        pytest.param(
            "coco_instances",
            INSTANCES_JSON,
            _instance_unknown_category,
            lambda ds: sum(len(r.annotations) for r in ds.records) == 49,
            id="instances-drops-one-annotation",
        ),
        pytest.param(
            "coco_captions",
            CAPTIONS_JSON,
            _drop_caption,
            lambda ds: [len(r.captions) for r in ds.records] == [2, 3],
            id="captions-drops-one-caption",
        ),
        pytest.param(
            "find_entity",
            ENTITY_JSON,
            lambda d: d["annotations"][0]["phrase"][0].update(start_idx=1),
            lambda ds: [r.image.id for r in ds.records] == [IMAGE_B],
            id="entity-drops-one-sentence",
        ),
    ],
)
def test_skip_per_format(
    tmp_path: Path, fmt: str, relative: str, change: Callable[[Any], None], check: Callable[[Any], bool]
) -> None:
    root = copy_sample(tmp_path)
    edit_json(root, relative, change)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = build(root, fmt, on_bad_record="skip")
        decode_all(dataset)
    assert check(dataset)
    messages = user_warnings(caught)
    assert len(messages) == 1, messages
    assert_names(messages[0], "skipped 1 bad record", Path(relative).name)


def test_skip_at_decode_returns_another_good_sample(tmp_path: Path) -> None:
    root = copy_sample(tmp_path)
    _random_bytes(root / "val2017" / JPEG_A)
    dataset = build(root, "coco_panoptic", on_bad_record="skip")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = dataset[0]
        again = dataset[(0, 7)]  # the training sampler's (index, seed) form
        second = dataset[1]
    assert first["image_id"] == again["image_id"] == second["image_id"] == IMAGE_B
    assert first["masks"].shape[0] > 0
    messages = user_warnings(caught)
    assert len(messages) == 1, messages
    assert_names(messages[0], "sample_coco_panoptic", JPEG_A, f"image_id={IMAGE_A}")


def test_skip_at_decode_gives_up_when_every_record_is_bad(tmp_path: Path) -> None:
    root = copy_sample(tmp_path)
    for name in (JPEG_A, "000000439180.jpg"):
        _random_bytes(root / "val2017" / name)
    dataset = build(root, "coco_panoptic", on_bad_record="skip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError) as caught:
            dataset[0]
    assert_names(caught.value, "consecutive bad records", "sample_coco_panoptic", KEY)


def test_error_policy_does_not_warn(tmp_path: Path) -> None:
    root = copy_sample(tmp_path)
    edit_json(root, PANOPTIC_JSON, _bad_category_in(IMAGE_A))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        with pytest.raises(DataError):
            build(root, "coco_panoptic")


# ---------------------------------------------------------------------------------------------------
# problems found late: keys on image and category entries, non-numbers, decode-time keys


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["images"][0].pop("height"),
        lambda d: d["categories"][0].pop("name"),
    ],
    ids=["image-without-height", "category-without-name"],
)
def test_image_or_category_without_required_key_names_config_key(
    tmp_path: Path, change: Callable[[Any], None]
) -> None:
    root = copy_sample(tmp_path)
    edit_json(root, PANOPTIC_JSON, change)
    with pytest.raises(DataError) as caught:
        build(root, "coco_panoptic")
    assert_names(caught.value, "panoptic_val2017.json", f"{KEY}.paths.panoptic_json")


@pytest.mark.parametrize(
    ("fmt", "relative", "change", "record"),
    [
        pytest.param(
            "coco_panoptic",
            PANOPTIC_JSON,
            lambda d: segment(d, IMAGE_A).update(area="big"),
            f"image_id={IMAGE_A}",
            id="panoptic-area",
        ),
        pytest.param(
            "coco_instances",
            INSTANCES_JSON,
            lambda d: d["annotations"][0].update(area="big"),
            "ann_id=0",
            id="instances-area",
        ),
        pytest.param(
            "find_entity",
            ENTITY_JSON,
            lambda d: d["annotations"][0]["phrase"][0].update(category_id="ball"),
            "entity id=0",
            id="entity-category_id",
        ),
        pytest.param(
            "find_entity",
            ENTITY_JSON,
            lambda d: d["annotations"][0]["phrase"][1]["reference"].update(prob="high"),
            "entity id=0",
            id="entity-reference-prob",
        ),
    ],
)
def test_non_numeric_optional_field(
    tmp_path: Path, fmt: str, relative: str, change: Callable[[Any], None], record: str
) -> None:
    root = copy_sample(tmp_path)
    edit_json(root, relative, change)
    with pytest.raises(DataError) as caught:
        build(root, fmt)
    assert_names(caught.value, Path(relative).name, record)


def test_uncompressed_rle_with_non_integer_counts(tmp_path: Path) -> None:
    root = copy_sample(tmp_path)
    edit_json(
        root,
        INSTANCES_JSON,
        lambda d: d["annotations"][0].update(segmentation={"size": [427, 640], "counts": ["a"]}),
    )
    with pytest.raises(DataError) as caught:
        build(root, "coco_instances")
    assert_names(
        caught.value, "panoptic_detection_format_val2017.json", "ann_id=0", f"{KEY}.paths.instances_json"
    )


def test_undecodable_rle_is_a_data_error(tmp_path: Path) -> None:
    root = copy_sample(tmp_path)
    edit_json(
        root,
        INSTANCES_JSON,
        lambda d: d["annotations"][0].update(segmentation={"size": [427, 640], "counts": "!!!"}),
    )
    dataset = build(root, "coco_instances")
    with pytest.raises(DataError) as caught:
        dataset[0]
    assert_names(caught.value, "undecodable segmentation", "ann_id=0", KEY)


@pytest.mark.parametrize(
    ("fmt", "corrupt", "file", "field"),
    [
        ("coco_panoptic", "image", JPEG_A, "image_root"),
        ("coco_panoptic", "png", PNG_A, "panoptic_root"),
        ("coco_instances", "rle", "panoptic_detection_format_val2017.json", "instances_json"),
    ],
)
def test_decode_errors_name_the_paths_key(
    tmp_path: Path, fmt: str, corrupt: str, file: str, field: str
) -> None:
    root = copy_sample(tmp_path)
    if corrupt == "image":
        _random_bytes(root / "val2017" / JPEG_A)
    elif corrupt == "png":
        _random_bytes(root / "panoptic_val2017" / PNG_A)
    else:
        edit_json(
            root,
            INSTANCES_JSON,
            lambda d: d["annotations"][0].update(segmentation={"size": [427, 640], "counts": "!!!"}),
        )
    dataset = build(root, fmt)
    with pytest.raises(DataError) as caught:
        dataset[0]
    assert_names(caught.value, file, f"{KEY}.paths.{field}")


# ---------------------------------------------------------------------------------------------------
# findlit data check


def write_experiment(tmp_path: Path, root: Path) -> Path:
    """configs/coco_sample.yaml with ``data.root`` pointing at ``root``."""
    config = yaml.safe_load((REPO / "configs" / "coco_sample.yaml").read_text())
    config["data"]["root"] = str(root)
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_check(capsys: pytest.CaptureFixture[str], config: Path) -> tuple[int, str]:
    code = main(["data", "check", "--config", str(config)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def count_rows(output: str) -> dict[str, list[int]]:
    """The report's table: dataset key -> the seven counts."""
    rows = {}
    for line in output.splitlines():
        if line.startswith("data."):  # the problems below the table are indented
            fields = line.split()
            rows[fields[0]] = [int(v) for v in fields[-7:]]
    return rows


def test_check_clean_sample(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, output = run_check(capsys, write_experiment(tmp_path, copy_sample(tmp_path)))
    assert code == 0, output
    assert "no problems found" in output
    # images, segments, captions, refs, sentences, entities, bad records
    assert count_rows(output) == {
        "data.val[0]": [2, 47, 0, 0, 0, 0, 0],
        "data.val[1]": [2, 47, 0, 0, 0, 0, 0],
        "data.val[2]": [2, 0, 6, 0, 0, 0, 0],
        "data.val[3]": [2, 6, 0, 6, 7, 0, 0],
        "data.val[4]": [2, 7, 0, 0, 0, 7, 0],
    }


def _corrupt_missing_file(root: Path) -> None:
    (root / CAPTIONS_JSON).unlink()


def _corrupt_malformed_json(root: Path) -> None:
    _truncate(root / PANOPTIC_JSON)


def _corrupt_bad_category(root: Path) -> None:
    edit_json(root, INSTANCES_JSON, lambda d: d["annotations"][3].update(category_id=9999))


def _corrupt_png_id(root: Path) -> None:
    edit_json(root, PANOPTIC_JSON, _drop_segment_at(IMAGE_B, 0))


def _corrupt_span(root: Path) -> None:
    edit_json(root, ENTITY_JSON, lambda d: d["annotations"][1]["phrase"][0].update(end_idx=30))


def _corrupt_image(root: Path) -> None:
    _random_bytes(root / "val2017" / JPEG_A)


@pytest.mark.parametrize(
    ("corrupt", "expected"),
    [
        pytest.param(
            _corrupt_missing_file,
            ["file not found", "captions_val2017.json", "data.val[2].paths.captions_json"],
            id="missing-file",
        ),
        pytest.param(
            _corrupt_malformed_json,
            ["malformed JSON", "panoptic_val2017.json", "data.val[0].paths.panoptic_json", "data.val[4]"],
            id="malformed-json",
        ),
        pytest.param(
            _corrupt_bad_category,
            [
                "category_id 9999",
                "panoptic_detection_format_val2017.json",
                "ann_id=3",
                "data.val[1]",
                "data.val[3]",
            ],
            id="bad-category",
        ),
        pytest.param(
            _corrupt_png_id,
            [
                "absent from segments_info",
                "000000439180.png",
                f"image_id={IMAGE_B}",
                "data.val[0]",
                "data.val[4]",
            ],
            id="png-id-absent-from-json",
        ),
        pytest.param(
            _corrupt_span,
            ["phrase span", "entity_val2017.json", "entity id=1", "data.val[4].paths.entity_json"],
            id="span-mismatch",
        ),
        pytest.param(
            _corrupt_image,
            [
                "corrupt or truncated image",
                JPEG_A,
                f"image_id={IMAGE_A}",
                *(f"data.val[{i}]" for i in range(5)),
            ],
            id="corrupt-image",
        ),
    ],
)
def test_check_reports_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], corrupt: Callable[[Path], None], expected: list[str]
) -> None:
    root = copy_sample(tmp_path)
    corrupt(root)
    code, output = run_check(capsys, write_experiment(tmp_path, root))
    assert code == 1, output
    assert "problem(s):" in output
    assert "Traceback" not in output
    assert_names(output, *expected)


def test_check_counts_the_good_records_next_to_the_bad(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = copy_sample(tmp_path)
    _corrupt_image(root)
    code, output = run_check(capsys, write_experiment(tmp_path, root))
    assert code == 1
    rows = count_rows(output)
    assert rows["data.val[0]"][0] == 1  # one image decoded
    assert rows["data.val[0]"][-1] == 1  # one bad record
    assert "5 problem(s):" in output


def test_check_reports_non_numeric_area(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = copy_sample(tmp_path)
    edit_json(root, PANOPTIC_JSON, lambda d: segment(d, IMAGE_A).update(area="big"))
    code, output = run_check(capsys, write_experiment(tmp_path, root))
    assert code == 1
    assert_names(output, "panoptic_val2017.json", f"image_id={IMAGE_A}")
