"""The hostile-input survey: every case, what it feeds findlit, and what the one-line error must say.

Each :class:`Case` builds its input under a fresh folder and returns the ``findlit`` arguments that
meet it; tests/cli/test_hostile_inputs.py runs every case through ``findlit.cli.main`` and checks a
non-zero exit, one line naming the file / record / key, no traceback, and every file that was
there before byte-identical after. ``python -m tests.cli.hostile_cases`` prints the table of
docs/hostile_inputs.md (a test keeps the two equal).

Data cases run ``findlit data check`` on a copy of the real COCO sample (tests/data/coco_sample),
whose one line per problem names the dataset's config key, the file and the record. The others run
``fit``, ``test``, ``predict``, ``data synth`` or ``cache`` on the tiny generated experiment.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image

from tests.fixtures import COCO_SAMPLE, REPO, copy_sample

SAMPLE_CONFIG = REPO / "configs" / "coco_sample.yaml"
PHOTO = "val2017/000000142238.jpg"
PANOPTIC_JSON = "annotations/panoptic_val2017.json"
INSTANCES_JSON = "annotations/panoptic_detection_format_val2017.json"
CAPTIONS_JSON = "annotations/captions_val2017.json"
REFS = "annotations/refs(umd).p"
ENTITY_JSON = "annotations/entity_val2017.json"


@dataclass
class Workspace:
    """Where a case builds its input: ``root`` (empty at first) and what the case set up in it."""

    root: Path
    sample: Path | None = None  # copy of the COCO sample (data cases)
    config: Path | None = None  # experiment YAML the case runs
    checkpoint: Path | None = None  # a valid tiny checkpoint (predict/test cases that need one)


@dataclass(frozen=True)
class Case:
    """One hostile input.

    Args:
        id: short name (test id and table row).
        area: images, annotations, configs, checkpoints, CLI flags or output folders.
        what: the input, in words.
        expect: fragments the error line must hold (``{sample}``, ``{root}`` are filled in).
        build: makes the input in the workspace and returns the ``findlit`` arguments.

    """

    id: str
    area: str
    what: str
    expect: tuple[str, ...]
    build: Callable[[Workspace], list[str]]


# -- data cases: a mutation of the COCO sample, met by `findlit data check` ---------------------------


def _sample_config(sample: Path, edit: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    config = yaml.safe_load(SAMPLE_CONFIG.read_text())
    config["data"]["root"] = str(sample)
    if edit is not None:
        edit(config)
    return config


def _data_case(mutate: Callable[[Path], None], edit: Callable[[dict[str, Any]], None] | None = None):
    """A builder: copy the sample, ``mutate`` its files, write the config, run ``data check``."""

    def build(space: Workspace) -> list[str]:
        space.sample = copy_sample(space.root)
        mutate(space.sample)
        space.config = space.root / "experiment.yaml"
        space.config.write_text(yaml.safe_dump(_sample_config(space.sample, edit)))
        return ["data", "check", "--config", str(space.config)]

    return build


def _json_edit(relative: str, change: Callable[[Any], Any]) -> Callable[[Path], None]:
    def mutate(sample: Path) -> None:
        path = sample / relative
        document = json.loads(path.read_text())
        result = change(document)
        path.write_text(json.dumps(document if result is None else result))

    return mutate


def _write(relative: str, content: bytes) -> Callable[[Path], None]:
    return lambda sample: (sample / relative).write_bytes(content)


def _image_edit(change: Callable[[Path], None]) -> Callable[[Path], None]:
    return lambda sample: change(sample / PHOTO)


def _png_header(width: int, height: int) -> bytes:
    """A PNG file that is only a header claiming ``width`` x ``height`` (no pixel data)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def _save_as(mode: str, fmt: str) -> Callable[[Path], None]:
    def change(path: Path) -> None:
        with Image.open(path) as image:
            converted = image.convert(mode)
        converted.save(path, format=fmt)

    return change


def _resize_photo(size: tuple[int, int]) -> Callable[[Path], None]:
    def change(path: Path) -> None:
        with Image.open(path) as image:
            resized = image.resize(size)
        resized.save(path, format="JPEG")

    return change


def _float_image(path: Path) -> None:
    with Image.open(path) as image:
        grey = np.asarray(image.convert("L"), dtype=np.float32) / 255
    Image.fromarray(grey, mode="F").save(path, format="TIFF")


def _first_panoptic_png(sample: Path) -> Path:
    document = json.loads((sample / PANOPTIC_JSON).read_text())
    return sample / "panoptic_val2017" / document["annotations"][0]["file_name"]


def _panoptic_png_edit(change: Callable[[Path], None]) -> Callable[[Path], None]:
    return lambda sample: change(_first_panoptic_png(sample))


def _refs_edit(change: Callable[[list[dict[str, Any]]], None]) -> Callable[[Path], None]:
    def mutate(sample: Path) -> None:
        path = sample / REFS
        refs = pickle.loads(path.read_bytes())  # the sample's own file: plain lists and dicts
        change(refs)
        path.write_bytes(pickle.dumps(refs))

    return mutate


class _RunsCode:
    """Unpickling this calls os.system: the refs reader must refuse it without running it."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo unpickled > /dev/null",))


def _set(path: list[Any], value: Any) -> Callable[[Any], None]:
    """A JSON change that sets ``document[path[0]][path[1]]... = value``."""

    def change(document: Any) -> None:
        target = document
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value

    return change


def _delete(path: list[Any]) -> Callable[[Any], None]:
    def change(document: Any) -> None:
        target = document
        for step in path[:-1]:
            target = target[step]
        del target[path[-1]]

    return change


def _append_copy(path: list[Any]) -> Callable[[Any], None]:
    """Append a copy of the list at ``path``'s first element (a duplicate record)."""

    def change(document: Any) -> None:
        target = document
        for step in path:
            target = target[step]
        target.append(dict(target[0]))

    return change


PHOTO_FILE = "{sample}/" + PHOTO
CAPTIONS_KEY = "data.val[2].paths.image_root"
PANOPTIC_KEY = "data.val[0].paths.panoptic_json"
INSTANCES_KEY = "data.val[1].paths.instances_json"

DATA_CASES = [
    # images
    Case(
        "image-empty-file",
        "images",
        "an image file of 0 bytes",
        ("corrupt or truncated image", PHOTO_FILE, CAPTIONS_KEY),
        _data_case(_write(PHOTO, b"")),
    ),
    Case(
        "image-truncated",
        "images",
        "a JPEG cut to a third",
        ("corrupt or truncated image", PHOTO_FILE, "image_id=142238"),
        _data_case(
            lambda s: (s / PHOTO).write_bytes((s / PHOTO).read_bytes()[: (s / PHOTO).stat().st_size // 3])
        ),
    ),
    Case(
        "image-text",
        "images",
        "a text file named .jpg",
        ("corrupt or truncated image", PHOTO_FILE),
        _data_case(_write(PHOTO, b"hello, I am not a photo")),
    ),
    Case(
        "image-random-bytes",
        "images",
        "random bytes named .jpg",
        ("corrupt or truncated image", PHOTO_FILE),
        _data_case(_write(PHOTO, bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)))),
    ),
    Case(
        "image-missing",
        "images",
        "an image the annotations list is absent",
        ("image file not found", PHOTO_FILE, CAPTIONS_KEY),
        _data_case(lambda s: (s / PHOTO).unlink()),
    ),
    Case(
        "image-is-folder",
        "images",
        "a folder where an image should be",
        ("is a folder, not an image file", PHOTO_FILE),
        _data_case(lambda s: ((s / PHOTO).unlink(), (s / PHOTO).mkdir())),
    ),
    Case(
        "image-wrong-size",
        "images",
        "an image resized after annotation",
        ("image is 80x100 but the annotations say 427x640", PHOTO_FILE),
        _data_case(_image_edit(_resize_photo((100, 80)))),
    ),
    Case(
        "image-one-pixel",
        "images",
        "a 1x1 image",
        ("image is 1x1 but the annotations say 427x640", PHOTO_FILE),
        _data_case(_image_edit(_resize_photo((1, 1)))),
    ),
    Case(
        "image-bomb-header",
        "images",
        "a PNG header claiming 100,000 x 100,000 pixels",
        ("refused as a possible decompression bomb", PHOTO_FILE),
        _data_case(_write(PHOTO, _png_header(100_000, 100_000))),
    ),
    Case(
        "image-float-pixels",
        "images",
        "a 32-bit float TIFF",
        ("floating-point pixels (PIL mode F) have no 8-bit meaning", PHOTO_FILE),
        _data_case(_image_edit(_float_image)),
    ),
    Case(
        "image-png-as-jpg-wrong-size",
        "images",
        "a PNG of another size behind a .jpg name",
        ("image is 10x10 but the annotations say 427x640", PHOTO_FILE),
        _data_case(lambda s: Image.new("RGB", (10, 10)).save(s / PHOTO, format="PNG")),
    ),
    Case(
        "image-root-missing",
        "images",
        "image_root names no folder",
        ("folder not found", "{sample}/nowhere", "data.val[2].paths.image_root"),
        _data_case(lambda s: None, lambda c: c["data"]["val"][2]["paths"].update(image_root="nowhere")),
    ),
    # panoptic annotations
    Case(
        "panoptic-json-empty",
        "annotations",
        "an empty panoptic JSON",
        ("malformed JSON at line 1 column 1", "{sample}/" + PANOPTIC_JSON, PANOPTIC_KEY),
        _data_case(_write(PANOPTIC_JSON, b"")),
    ),
    Case(
        "panoptic-json-truncated",
        "annotations",
        "a panoptic JSON cut at 500 bytes",
        ("malformed JSON", "{sample}/" + PANOPTIC_JSON),
        _data_case(lambda s: (s / PANOPTIC_JSON).write_bytes((s / PANOPTIC_JSON).read_bytes()[:500])),
    ),
    Case(
        "panoptic-json-binary",
        "annotations",
        "random bytes as the panoptic JSON",
        ("{sample}/" + PANOPTIC_JSON, PANOPTIC_KEY),
        _data_case(
            _write(PANOPTIC_JSON, bytes(np.random.default_rng(1).integers(128, 256, 300, dtype=np.uint8)))
        ),
    ),
    Case(
        "panoptic-json-list",
        "annotations",
        "a JSON list instead of an object",
        ("expected a JSON object at top level, got list", "{sample}/" + PANOPTIC_JSON),
        _data_case(_write(PANOPTIC_JSON, b"[]")),
    ),
    Case(
        "panoptic-no-annotations",
        "annotations",
        "no 'annotations' key",
        ("missing top-level key 'annotations'", "{sample}/" + PANOPTIC_JSON),
        _data_case(_json_edit(PANOPTIC_JSON, _delete(["annotations"]))),
    ),
    Case(
        "panoptic-annotations-dict",
        "annotations",
        "'annotations' is an object",
        ("top-level key 'annotations' should be a list", "{sample}/" + PANOPTIC_JSON),
        _data_case(_json_edit(PANOPTIC_JSON, _set(["annotations"], {}))),
    ),
    Case(
        "panoptic-empty-split",
        "annotations",
        "no images and no annotations",
        ("no usable records in this file", "{sample}/" + PANOPTIC_JSON, "data.val[0]"),
        _data_case(_json_edit(PANOPTIC_JSON, lambda d: d.update(images=[], annotations=[]))),
    ),
    Case(
        "panoptic-duplicate-image",
        "annotations",
        "an image id listed twice",
        ("image id 142238 is listed twice", "{sample}/" + PANOPTIC_JSON, "image_id=142238"),
        _data_case(_json_edit(PANOPTIC_JSON, _append_copy(["images"]))),
    ),
    Case(
        "panoptic-duplicate-category",
        "annotations",
        "a category id listed twice",
        ("category id 1 is listed twice", "{sample}/" + PANOPTIC_JSON),
        _data_case(_json_edit(PANOPTIC_JSON, _append_copy(["categories"]))),
    ),
    Case(
        "panoptic-category-name-empty",
        "annotations",
        "a category named ''",
        ("category name is empty", "category_id=1"),
        _data_case(_json_edit(PANOPTIC_JSON, _set(["categories", 0, "name"], ""))),
    ),
    Case(
        "panoptic-category-name-number",
        "annotations",
        "a category name that is a number",
        ("key 'name' should be str, got int", "category_id=1"),
        _data_case(_json_edit(PANOPTIC_JSON, _set(["categories", 0, "name"], 7))),
    ),
    Case(
        "panoptic-image-id-null",
        "annotations",
        "an image id that is null",
        ("key 'id' should be int, got NoneType", "{sample}/" + PANOPTIC_JSON),
        _data_case(_json_edit(PANOPTIC_JSON, _set(["images", 0, "id"], None))),
    ),
    Case(
        "panoptic-image-id-bool",
        "annotations",
        "an image id that is true",
        ("key 'id' should be int, got bool",),
        _data_case(_json_edit(PANOPTIC_JSON, _set(["images", 0, "id"], True))),
    ),
    Case(
        "panoptic-height-string",
        "annotations",
        "an image height given as a string",
        ("key 'height' should be int, got str", "image_id=142238"),
        _data_case(_json_edit(PANOPTIC_JSON, _set(["images", 0, "height"], "427"))),
    ),
    Case(
        "panoptic-height-zero",
        "annotations",
        "an image of height 0",
        ("image size 0x640 is not positive", "image_id=142238"),
        _data_case(_json_edit(PANOPTIC_JSON, _set(["images", 0, "height"], 0))),
    ),
    Case(
        "panoptic-file-name-empty",
        "annotations",
        "an image file_name ''",
        ("file_name is empty", "image_id=142238"),
        _data_case(_json_edit(PANOPTIC_JSON, _set(["images", 0, "file_name"], ""))),
    ),
    Case(
        "panoptic-segment-duplicate",
        "annotations",
        "a segment listed twice in segments_info",
        ("{sample}/" + PANOPTIC_JSON, "image_id=142238"),
        _data_case(_json_edit(PANOPTIC_JSON, _append_copy(["annotations", 0, "segments_info"]))),
    ),
    Case(
        "panoptic-unknown-category",
        "annotations",
        "a segment of category 9999",
        ("9999", "image_id=142238"),
        _data_case(
            _json_edit(PANOPTIC_JSON, _set(["annotations", 0, "segments_info", 0, "category_id"], 9999))
        ),
    ),
    Case(
        "panoptic-category-string",
        "annotations",
        "a segment category 'dog'",
        ("key 'category_id' should be int, got str",),
        _data_case(
            _json_edit(PANOPTIC_JSON, _set(["annotations", 0, "segments_info", 0, "category_id"], "dog"))
        ),
    ),
    Case(
        "panoptic-png-missing",
        "annotations",
        "a panoptic PNG the JSON lists is absent",
        ("image file not found", "{sample}/panoptic_val2017/000000142238.png"),
        _data_case(lambda s: _first_panoptic_png(s).unlink()),
    ),
    Case(
        "panoptic-png-wrong-size",
        "annotations",
        "a panoptic PNG of 10x10",
        ("panoptic PNG is 10x10, image is 427x640", "{sample}/panoptic_val2017/000000142238.png"),
        _data_case(_panoptic_png_edit(lambda p: Image.open(p).resize((10, 10)).save(p))),
    ),
    Case(
        "panoptic-png-greyscale",
        "annotations",
        "a panoptic PNG saved as greyscale",
        ("in the PNG are absent from segments_info", "{sample}/panoptic_val2017/000000142238.png"),
        _data_case(_panoptic_png_edit(lambda p: Image.open(p).convert("L").save(p))),
    ),
    Case(
        "panoptic-png-text",
        "annotations",
        "a text file as the panoptic PNG",
        ("corrupt or truncated image", "{sample}/panoptic_val2017/000000142238.png"),
        _data_case(_panoptic_png_edit(lambda p: p.write_text("not a png"))),
    ),
    # instances, captions, refs, entities
    Case(
        "instances-segmentation-string",
        "annotations",
        "a segmentation that is a string",
        ("{sample}/" + INSTANCES_JSON, INSTANCES_KEY, "ann_id=0"),
        _data_case(_json_edit(INSTANCES_JSON, _set(["annotations", 0, "segmentation"], "abc"))),
    ),
    Case(
        "instances-polygon-odd",
        "annotations",
        "a polygon of 3 numbers",
        ("{sample}/" + INSTANCES_JSON, "ann_id=0"),
        _data_case(_json_edit(INSTANCES_JSON, _set(["annotations", 0, "segmentation"], [[1, 2, 3]]))),
    ),
    Case(
        "instances-rle-wrong-size",
        "annotations",
        "an RLE of another image size",
        ("{sample}/" + INSTANCES_JSON, "ann_id=0"),
        _data_case(
            _json_edit(
                INSTANCES_JSON, _set(["annotations", 0, "segmentation"], {"size": [5, 5], "counts": "0"})
            )
        ),
    ),
    Case(
        "instances-bbox-negative",
        "annotations",
        "a bbox of negative size",
        ("has a negative width or height", "ann_id=0"),
        _data_case(_json_edit(INSTANCES_JSON, _set(["annotations", 0, "bbox"], [-5, -5, -1, -1]))),
    ),
    Case(
        "instances-bbox-short",
        "annotations",
        "a bbox of 3 numbers",
        ("bbox should be [x, y, w, h]", "ann_id=0"),
        _data_case(_json_edit(INSTANCES_JSON, _set(["annotations", 0, "bbox"], [1, 2, 3]))),
    ),
    Case(
        "instances-duplicate-id",
        "annotations",
        "an annotation id listed twice",
        ("annotation id 0 is listed twice", INSTANCES_KEY),
        _data_case(_json_edit(INSTANCES_JSON, _append_copy(["annotations"]))),
    ),
    Case(
        "instances-unknown-image",
        "annotations",
        "an annotation of image 424242",
        ("424242", "{sample}/" + INSTANCES_JSON),
        _data_case(_json_edit(INSTANCES_JSON, _set(["annotations", 0, "image_id"], 424242))),
    ),
    Case(
        "captions-empty",
        "annotations",
        "a caption ''",
        ("caption is empty", "{sample}/" + CAPTIONS_JSON, "ann_id=1"),
        _data_case(_json_edit(CAPTIONS_JSON, _set(["annotations", 0, "caption"], "  "))),
    ),
    Case(
        "captions-number",
        "annotations",
        "a caption that is a number",
        ("key 'caption' should be str, got int",),
        _data_case(_json_edit(CAPTIONS_JSON, _set(["annotations", 0, "caption"], 5))),
    ),
    Case(
        "captions-missing-key",
        "annotations",
        "an annotation without 'caption'",
        ("missing required key 'caption'",),
        _data_case(_json_edit(CAPTIONS_JSON, _delete(["annotations", 0, "caption"]))),
    ),
    Case(
        "refs-not-pickle",
        "annotations",
        "a text file as the refs pickle",
        ("{sample}/" + REFS, "data.val[3].paths.refs"),
        _data_case(_write(REFS, b"not a pickle")),
    ),
    Case(
        "refs-pickle-runs-code",
        "annotations",
        "a refs pickle that would call os.system",
        ("refusing to unpickle posix.system", "{sample}/" + REFS),
        _data_case(_write(REFS, pickle.dumps(_RunsCode()))),
    ),
    Case(
        "refs-sentence-empty",
        "annotations",
        "a referring sentence ''",
        ("sentence 0 is empty", "ref_id=0"),
        _data_case(_refs_edit(lambda refs: refs[0]["sentences"][0].update(raw="", sent=""))),
    ),
    Case(
        "refs-no-sentences",
        "annotations",
        "a ref with no sentences",
        ("ref has no sentences", "ref_id=0"),
        _data_case(_refs_edit(lambda refs: refs[0].update(sentences=[]))),
    ),
    Case(
        "refs-unknown-annotation",
        "annotations",
        "a ref to annotation 123456789",
        ("ann_id 123456789 is not in the instances file", "ref_id=0"),
        _data_case(_refs_edit(lambda refs: refs[0].update(ann_id=123456789))),
    ),
    Case(
        "refs-unknown-split",
        "annotations",
        "a split the refs file does not have",
        ("no usable records of split 'nosuchsplit'", "{sample}/" + REFS),
        _data_case(lambda s: None, lambda c: c["data"]["val"][3]["paths"].update(split="nosuchsplit")),
    ),
    Case(
        "entity-json-object",
        "annotations",
        "an entity JSON that is an object",
        ("{sample}/" + ENTITY_JSON, "data.val[4].paths.entity_json"),
        _data_case(_write(ENTITY_JSON, b'{"a": 1}')),
    ),
]


# -- experiment cases: the tiny generated experiment, met by fit / test / predict / cache -------------


def _tiny(space: Workspace) -> dict[str, Any]:
    from tests.cli.test_train import tiny_config

    space.config = tiny_config(space.root, train_images=2)
    return yaml.safe_load(space.config.read_text())


def _experiment(
    subcommand: str,
    edit: Callable[[dict[str, Any]], None] | None = None,
    extra: Callable[[Workspace], list[str]] | None = None,
):
    """A builder: the tiny experiment, ``edit``-ed, run with ``subcommand`` and ``extra`` arguments."""

    def build(space: Workspace) -> list[str]:
        config = _tiny(space)
        if edit is not None:
            edit(config)
        assert space.config is not None
        space.config.write_text(yaml.safe_dump(config))
        return [subcommand, "--config", str(space.config), *(extra(space) if extra else [])]

    return build


def _config_file(content: str):
    """A builder: ``fit --config`` on a file holding ``content``."""

    def build(space: Workspace) -> list[str]:
        path = space.root / "experiment.yaml"
        path.write_text(content)
        return ["fit", "--config", str(path)]

    return build


def _checkpoint(space: Workspace) -> Path:
    from tests.inference.test_predictor import save_checkpoint

    space.checkpoint = save_checkpoint(space.root / "model.ckpt")
    return space.checkpoint


def _test_with(make: Callable[[Workspace], Path]):
    """A builder: ``test`` of the tiny experiment with the checkpoint ``make`` writes."""
    return _experiment("test", extra=lambda space: ["--ckpt_path", str(make(space))])


def _bytes_file(name: str, content: bytes) -> Callable[[Workspace], Path]:
    def make(space: Workspace) -> Path:
        path = space.root / name
        path.write_bytes(content)
        return path

    return make


def _truncated_checkpoint(space: Workspace) -> Path:
    whole = _checkpoint(space).read_bytes()
    path = space.root / "truncated.ckpt"
    path.write_bytes(whole[: len(whole) // 2])
    return path


def _state_dict_only(space: Workspace) -> Path:
    content = torch.load(_checkpoint(space), weights_only=True)
    path = space.root / "weights.pt"
    torch.save(content["state_dict"], path)
    return path


def _other_encoder(space: Workspace) -> Path:
    from tests.fixtures import other_encoder_checkpoint

    return other_encoder_checkpoint(_checkpoint(space), space.root)


def _code_checkpoint(space: Workspace) -> Path:
    path = space.root / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _RunsCode()}, path)
    return path


def _visual_checkpoint(space: Workspace) -> Path:
    from tests.inference.test_predictor_clicks import save_visual_checkpoint

    space.checkpoint = save_visual_checkpoint(space.root / "visual.ckpt")
    return space.checkpoint


def _predict(
    images: Callable[[Workspace], list[str]],
    extra: list[str] | Callable[[Workspace], list[str]] = (),
    out: Callable[[Workspace], Path] | None = None,
    checkpoint: Callable[[Workspace], Path] = _checkpoint,
):
    """A builder: ``predict`` with a (valid, unless given) tiny checkpoint, images and arguments."""

    def build(space: Workspace) -> list[str]:
        model = checkpoint(space)
        folder = out(space) if out is not None else space.root / "out"
        more = extra(space) if callable(extra) else list(extra)
        return [
            "predict", "--ckpt_path", str(model), "--images", *images(space),
            "--out", str(folder), "--image_size", "64", "--device", "cpu", *more,
        ]  # fmt: skip

    return build


def _photo(space: Workspace) -> list[str]:
    target = space.root / "photo.jpg"
    shutil.copyfile(COCO_SAMPLE / PHOTO, target)
    return [str(target)]


def _scribble_file(
    height: int | None, width: int | None, marked: bool = True
) -> Callable[[Workspace], list[str]]:
    """``--scribbles FILE``: a black PNG of the photo's size (or the given one), one stroke on it."""

    def extra(space: Workspace) -> list[str]:
        with Image.open(COCO_SAMPLE / PHOTO) as photo:
            size = (width or photo.width, height or photo.height)
        canvas = np.zeros((size[1], size[0]), dtype=np.uint8)
        if marked:
            canvas[10:12, 10:60] = 255
        path = space.root / "scribble.png"
        Image.fromarray(canvas).save(path)
        return ["--scribbles", str(path)]

    return extra


def _file_named(name: str, content: bytes) -> Callable[[Workspace], list[str]]:
    def images(space: Workspace) -> list[str]:
        path = space.root / name
        path.write_bytes(content)
        return [str(path)]

    return images


def _existing_file(space: Workspace) -> Path:
    path = space.root / "notes.txt"
    path.write_text("my notes")
    return path


def _earlier_predictions(space: Workspace) -> Path:
    folder = space.root / "out"
    folder.mkdir()
    (folder / "photo.json").write_text('{"mine": true}')
    return folder


def _synth(*arguments: str, prepare: Callable[[Workspace], None] | None = None):
    def build(space: Workspace) -> list[str]:
        if prepare is not None:
            prepare(space)
        return ["data", "synth", "--out", str(space.root / "data"), "--workers", "1", *arguments]

    return build


def _user_folder(space: Workspace) -> None:
    (space.root / "data").mkdir()
    (space.root / "data" / "thesis.txt").write_text("my thesis")


def _earlier_run(space: Workspace) -> list[str]:
    run = space.root / "logs" / "lightning_logs" / "version_0"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text('{"test/x/PQ": 0.5}')
    (run / "metrics.csv").write_text("step,test/x/PQ\n0,0.5\n")
    return ["--ckpt_path", str(_checkpoint(space)), "--trainer.logger.init_args.version", "0"]


def _val0(change: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    return lambda config: change(config["data"]["val"][0])


EXPERIMENT_CASES = [
    # configs
    Case(
        "config-missing",
        "configs",
        "--config names no file",
        ("{root}/nope.yaml",),
        lambda s: ["fit", "--config", str(s.root / "nope.yaml")],
    ),
    Case(
        "config-malformed-yaml",
        "configs",
        "a config that is not YAML",
        ("{root}/experiment.yaml: not valid YAML at line",),
        _config_file("model: [1, 2\n  trainer: {"),
    ),
    Case(
        "config-a-list",
        "configs",
        "a config that is a YAML list",
        ("{root}/experiment.yaml: a config file must be a mapping of sections, got a YAML list",),
        _config_file("- 1\n- 2\n"),
    ),
    Case(
        "config-unknown-section",
        "configs",
        "a misspelt top-level key",
        ("modle",),
        _experiment("fit", lambda c: c.update(modle={})),
    ),
    Case(
        "config-unknown-interface-key",
        "configs",
        "model.interface.hidden_dimm",
        ("hidden_dimm",),
        _experiment("fit", lambda c: c["model"]["interface"].update(hidden_dimm=8)),
    ),
    Case(
        "config-interface-wrong-type",
        "configs",
        "model.interface.hidden_dim: 'wide'",
        ("hidden_dim",),
        _experiment("fit", lambda c: c["model"]["interface"].update(hidden_dim="wide")),
    ),
    Case(
        "config-unknown-task-option",
        "configs",
        "task_options for a task that does not exist",
        ("segmentaton",),
        _experiment("fit", lambda c: c["model"]["task_options"].update(segmentaton={})),
    ),
    Case(
        "config-unknown-format",
        "configs",
        "data.val[0].format: coco_panoptik",
        ("[0].format: Expected a typing.Literal", "coco_panoptik", "{root}/tiny.yaml"),
        _experiment("fit", _val0(lambda d: d.update(format="coco_panoptik"))),
    ),
    Case(
        "config-unknown-task",
        "configs",
        "data.val[0].task: segmentashun",
        ("segmentashun",),
        _experiment("fit", _val0(lambda d: d.update(task="segmentashun"))),
    ),
    Case(
        "config-dataset-unknown-key",
        "configs",
        "data.val[0].batch_sise: 4 (a misspelt key)",
        ("batch_sise",),
        _experiment("fit", _val0(lambda d: d.update(batch_sise=4))),
    ),
    Case(
        "config-duplicate-names",
        "configs",
        "two validation datasets of one name",
        ("demo_panoptic",),
        _experiment("fit", lambda c: c["data"]["val"].append(dict(c["data"]["val"][0]))),
    ),
    Case(
        "config-batch-size-zero",
        "configs",
        "data.val[0].batch_size: 0",
        ("batch_size",),
        _experiment("fit", _val0(lambda d: d.update(batch_size=0))),
    ),
    Case(
        "config-max-steps-text",
        "configs",
        "trainer.max_steps: many",
        ("max_steps",),
        _experiment("fit", lambda c: c["trainer"].update(max_steps="many")),
    ),
    Case(
        "config-data-file-missing",
        "configs",
        "a dataset's annotation file does not exist",
        ("data.val[0].paths.panoptic_json", "missing.json"),
        _experiment("fit", _val0(lambda d: d["paths"].update(panoptic_json="missing.json"))),
    ),
    Case(
        "config-root-missing",
        "configs",
        "data.root names no folder",
        ("data.train[0]", "{root}/elsewhere"),
        _experiment(
            "fit", lambda c: c["data"].update(root=str(Path(c["data"]["root"]).parent / "elsewhere"))
        ),
    ),
    Case(
        "config-unknown-encoder",
        "configs",
        "model.vision_encoder.name: resnet9000",
        ("resnet9000",),
        _experiment("fit", lambda c: c["model"].update(vision_encoder={"name": "resnet9000"})),
    ),
    # CLI flags
    Case(
        "flag-unknown",
        "CLI flags",
        "--trainer.max_stepz 3",
        ("max_stepz",),
        _experiment("fit", extra=lambda s: ["--trainer.max_stepz", "3"]),
    ),
    Case(
        "flag-bad-value",
        "CLI flags",
        "--model.lr fast",
        ("lr",),
        _experiment("fit", extra=lambda s: ["--model.lr", "fast"]),
    ),
    Case(
        "flag-test-without-checkpoint",
        "CLI flags",
        "test without --ckpt_path (and allow_untrained off)",
        ("--ckpt_path", "--allow_untrained"),
        _experiment("test", lambda c: c.update(allow_untrained=False)),
    ),
    Case(
        "predict-image-missing",
        "CLI flags",
        "predict --images of a file that does not exist",
        ("{root}/ghost.jpg",),
        _predict(lambda s: [str(s.root / "ghost.jpg")], ["--prompts", "a cat"]),
    ),
    Case(
        "predict-image-not-image",
        "CLI flags",
        "predict --images of a text file",
        ("{root}/notes.jpg",),
        _predict(_file_named("notes.jpg", b"plain text"), ["--prompts", "a cat"]),
    ),
    Case(
        "predict-no-prompts",
        "CLI flags",
        "predict with neither prompts nor classes",
        ("nothing to predict",),
        _predict(_photo),
    ),
    Case(
        "predict-click-negative-only",
        "CLI flags",
        "predict --points 5,5,0 (a negative click and no positive one)",
        ("--points: negative clicks without a positive one",),
        _predict(_photo, ["--points", "5,5,0"]),
    ),
    Case(
        "predict-click-malformed",
        "CLI flags",
        "predict --points 5 (one number)",
        ("--points: '5' is not x,y or x,y,label",),
        _predict(_photo, ["--points", "5"]),
    ),
    Case(
        "predict-box-inverted",
        "CLI flags",
        "predict --boxes 50,10,20,40 (x1 < x0)",
        ("--boxes: box 0", "needs x1 > x0"),
        _predict(_photo, ["--boxes", "50,10,20,40"]),
    ),
    Case(
        "predict-clicks-without-interactive",
        "CLI flags",
        "predict --points on a checkpoint without the interactive task",
        ("clicks need the interactive task",),
        _predict(_photo, ["--points", "5,5"]),
    ),
    Case(
        "predict-click-outside-image",
        "CLI flags",
        "predict --points 100000,5 (beyond the image's width)",
        ("points[0] at (100000, 5) lies outside", "photo.jpg"),
        _predict(_photo, ["--points", "100000,5"], checkpoint=_visual_checkpoint),
    ),
    Case(
        "predict-scribble-empty",
        "CLI flags",
        "predict --scribbles of an all-black image (a scribble that marks nothing)",
        ("--scribbles: scribble 0 is empty",),
        _predict(_photo, _scribble_file(None, None, marked=False), checkpoint=_visual_checkpoint),
    ),
    Case(
        "predict-scribble-other-size",
        "CLI flags",
        "predict --scribbles of a 40 x 50 image on a larger photo",
        ("scribbles[0] is 40x50", "photo.jpg"),
        _predict(_photo, _scribble_file(40, 50), checkpoint=_visual_checkpoint),
    ),
    Case(
        "predict-blank-prompt",
        "CLI flags",
        "predict --prompts '   '",
        ("prompt 0 is empty",),
        _predict(_photo, ["--prompts", "   "]),
    ),
    Case(
        "predict-empty-class",
        "CLI flags",
        "predict --classes 'cat,,dog'",
        ("--classes: class name 1 is empty",),
        _predict(_photo, ["--prompts", "a cat", "--classes", "cat,,dog"]),
    ),
    Case(
        "predict-image-size-zero",
        "CLI flags",
        "predict --image_size 0",
        ("--image_size",),
        _predict(_photo, ["--prompts", "a cat", "--image_size", "0"]),
    ),
    Case(
        "synth-negative-count",
        "CLI flags",
        "data synth --train -3",
        ("findlit data synth: need at least one image", "train=-3"),
        _synth("--train", "-3"),
    ),
    Case(
        "synth-size-zero",
        "CLI flags",
        "data synth --size 0",
        ("findlit data synth: size must be at least 32 pixels, got 0",),
        _synth("--size", "0"),
    ),
    Case(
        "cache-unknown-split",
        "CLI flags",
        "cache --split bogus",
        ("bogus",),
        _experiment("cache", extra=lambda s: ["--split", "bogus"]),
    ),
    Case(
        "cache-no-feature-folder",
        "CLI flags",
        "cache of a split whose datasets set no features",
        ("features",),
        _experiment("cache", extra=lambda s: ["--split", "val"]),
    ),
    # checkpoints
    Case(
        "checkpoint-missing",
        "checkpoints",
        "--ckpt_path names no file",
        ("{root}/ghost.ckpt",),
        _test_with(lambda s: s.root / "ghost.ckpt"),
    ),
    Case(
        "checkpoint-empty",
        "checkpoints",
        "a checkpoint of 0 bytes",
        ("{root}/empty.ckpt",),
        _test_with(_bytes_file("empty.ckpt", b"")),
    ),
    Case(
        "checkpoint-text",
        "checkpoints",
        "a text file as checkpoint",
        ("{root}/notes.ckpt",),
        _test_with(_bytes_file("notes.ckpt", b"hello\n")),
    ),
    Case(
        "checkpoint-json",
        "checkpoints",
        "a JSON file as checkpoint",
        ("{root}/config.ckpt",),
        _test_with(_bytes_file("config.ckpt", b'{"state_dict": {}}')),
    ),
    Case(
        "checkpoint-truncated",
        "checkpoints",
        "half a checkpoint",
        ("{root}/truncated.ckpt",),
        _test_with(_truncated_checkpoint),
    ),
    Case(
        "checkpoint-code",
        "checkpoints",
        "a checkpoint whose pickle calls os.system",
        ("{root}/evil.ckpt",),
        _test_with(_code_checkpoint),
    ),
    Case(
        "checkpoint-state-dict-only",
        "checkpoints",
        "a bare state_dict, not a Lightning checkpoint",
        ("{root}/weights.pt", "state_dict"),
        _test_with(_state_dict_only),
    ),
    Case(
        "checkpoint-other-encoder",
        "checkpoints",
        "a checkpoint trained on another vision encoder's weights",
        ("{root}/other_encoder.ckpt",),
        _predict(_photo, ["--prompts", "a cat"], checkpoint=_other_encoder),
    ),
    Case(
        "checkpoint-folder",
        "checkpoints",
        "--ckpt_path names a folder",
        ("{root}",),
        _test_with(lambda s: s.root),
    ),
    # output folders
    Case(
        "output-earlier-run",
        "output folders",
        "test into an existing run (version 0)",
        ("version_0",),
        _experiment("test", extra=_earlier_run),
    ),
    Case(
        "output-predict-earlier-files",
        "output folders",
        "predict into a folder with earlier predictions",
        ("{root}/out",),
        _predict(_photo, ["--prompts", "a cat"], out=_earlier_predictions),
    ),
    Case(
        "output-predict-out-is-file",
        "output folders",
        "predict --out names an existing file",
        ("{root}/notes.txt",),
        _predict(_photo, ["--prompts", "a cat"], out=_existing_file),
    ),
    Case(
        "output-synth-into-user-folder",
        "output folders",
        "data synth into a folder that holds the user's files",
        ("{root}/data",),
        _synth("--train", "1", "--val", "1", "--test", "1", "--size", "32", prepare=_user_folder),
    ),
    Case(
        "output-root-dir-is-file",
        "output folders",
        "trainer.default_root_dir names a file",
        ("{root}/notes.txt",),
        _experiment(
            "fit",
            lambda c: c["trainer"].update(default_root_dir=None),
            extra=lambda s: ["--trainer.logger.init_args.save_dir", str(_existing_file(s))],
        ),
    ),
]

CASES = DATA_CASES + EXPERIMENT_CASES


def markdown_table() -> str:
    """The table of docs/hostile_inputs.md: one row per case."""
    lines = ["| # | area | input | the one-line error holds |", "|---|---|---|---|"]
    for number, case in enumerate(CASES, start=1):
        expected = "; ".join(f"`{fragment}`" for fragment in case.expect)
        lines.append(f"| {number} | {case.area} | {case.what} (`{case.id}`) | {expected} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
