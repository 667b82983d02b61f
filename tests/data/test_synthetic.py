"""Tests of the synthetic COCO-format dataset generator (small sizes: 12 train + 4 val at 128 px)."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from findlit.data import synthetic
from findlit.data.synthetic import (
    COLOURS,
    MARKER_NAME,
    SHAPES,
    SIZE_WORDS,
    Description,
    Thing,
    generate,
    render_scene,
    unique_descriptions,
)

TRAIN, VAL, SIZE, SEED = 12, 4, 128, 0
SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "demo"
    generate(out, TRAIN, VAL, SIZE, SEED, test=VAL)
    return out


def _load(data: Path, name: str) -> Any:
    return json.loads((data / "annotations" / name).read_text())


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _png_ids(path: Path) -> np.ndarray:
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def _index_of(image_id: int) -> tuple[str, int]:
    """Split and index of an image id (the inverse of synthetic.image_id_for)."""
    for split in SPLITS:
        for index in range(TRAIN if split == "train" else VAL):
            if synthetic.image_id_for(split, index) == image_id:
                return split, index
    raise KeyError(image_id)


# ------------------------------------------------------------------------------------------------
# An independent reading of the generated language: tokens -> stated attributes
# ------------------------------------------------------------------------------------------------

_SIZE_OF_WORD = {word: size for size, words in SIZE_WORDS.items() for word in words}


def _parse(tokens: list[str]) -> dict[str, str]:
    """The attributes a referring expression states (shape, colour, size, hpos, vpos)."""
    shapes = [t for t in tokens if t in SHAPES]
    assert len(shapes) == 1, tokens
    stated = {"shape": shapes[0]}
    colours = [t for t in tokens if t in COLOURS]
    sizes = [_SIZE_OF_WORD[t] for t in tokens if t in _SIZE_OF_WORD]
    hpos = [t for t in tokens if t in ("left", "right", "center")]
    vpos = [t for t in tokens if t in ("top", "bottom", "middle")]
    assert len(colours) <= 1 and len(sizes) <= 1 and len(hpos) <= 1 and len(vpos) <= 1, tokens
    if colours:
        stated["colour"] = colours[0]
    if sizes:
        stated["size"] = sizes[0]
    if hpos:
        stated["hpos"] = hpos[0]
    if vpos:
        stated["vpos"] = vpos[0]
    elif hpos == ["center"]:
        stated["vpos"] = "middle"  # "in the center" states both axes
    return stated


def _fits(stated: dict[str, str], thing: Thing) -> bool:
    return all(getattr(thing, key) == value for key, value in stated.items())


def _thirds(mask: np.ndarray) -> tuple[str, str]:
    ys, xs = np.nonzero(mask)
    u, v = (xs.mean() + 0.5) / mask.shape[1], (ys.mean() + 0.5) / mask.shape[0]
    hpos = "left" if u < 1 / 3 else "right" if u > 2 / 3 else "center"
    vpos = "top" if v < 1 / 3 else "bottom" if v > 2 / 3 else "middle"
    return hpos, vpos


# ------------------------------------------------------------------------------------------------
# Determinism
# ------------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes(data: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate(again, TRAIN, VAL, SIZE, SEED, test=VAL)
    assert _tree(again) == _tree(data)


def test_other_seed_differs(data: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    generate(other, TRAIN, VAL, SIZE, SEED + 1)
    for name in ("panoptic_train.json", "captions_train.json", "refs_train.json", "entity_val.json"):
        assert (other / "annotations" / name).read_bytes() != (data / "annotations" / name).read_bytes()


def test_two_workers_equal_one(data: Path, tmp_path: Path) -> None:
    parallel = tmp_path / "parallel"
    generate(parallel, TRAIN, VAL, SIZE, SEED, workers=2, test=VAL)
    assert _tree(parallel) == _tree(data)


# ------------------------------------------------------------------------------------------------
# Round trip: files == the generator's scenes; instances == panoptic
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", SPLITS)
def test_pixels_round_trip(data: Path, split: str) -> None:
    panoptic = _load(data, f"panoptic_{split}.json")
    assert len(panoptic["annotations"]) == (TRAIN if split == "train" else VAL)
    for index, ann in enumerate(panoptic["annotations"]):
        scene = render_scene(SEED, split, index, SIZE)
        assert ann["image_id"] == synthetic.image_id_for(split, index)
        ids = _png_ids(data / f"panoptic_{split}" / ann["file_name"])
        np.testing.assert_array_equal(ids, scene.segment_ids)
        seg_ids, masks = scene.masks()
        assert [s["id"] for s in ann["segments_info"]] == seg_ids.tolist()
        assert masks.shape == (len(seg_ids), SIZE, SIZE)
        assert masks.sum(axis=0).max() == 1  # every pixel in exactly one segment
        photo = np.asarray(Image.open(data / split / f"{ann['image_id']:012d}.jpg"))
        assert photo.shape == (SIZE, SIZE, 3)
        assert np.abs(photo.astype(int) - scene.image.astype(int)).mean() < 4  # JPEG q95 is close


@pytest.mark.parametrize("split", SPLITS)
def test_instances_equal_panoptic_segments(data: Path, split: str) -> None:
    panoptic = _load(data, f"panoptic_{split}.json")
    instances = _load(data, f"instances_{split}.json")
    by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in instances["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    for pan in panoptic["annotations"]:
        ids = _png_ids(data / f"panoptic_{split}" / pan["file_name"])
        anns = by_image[pan["image_id"]]
        assert len(anns) == len(pan["segments_info"])
        for seg, ann in zip(pan["segments_info"], anns, strict=True):
            assert isinstance(ann["segmentation"]["counts"], str)
            decoded = mask_utils.decode(ann["segmentation"]).astype(bool)
            np.testing.assert_array_equal(decoded, ids == seg["id"])
            ys, xs = np.nonzero(decoded)
            bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
            assert ann["category_id"] == seg["category_id"]
            assert ann["area"] == seg["area"] == int(decoded.sum())
            assert ann["bbox"] == seg["bbox"] == bbox
            assert ann["iscrowd"] == seg["iscrowd"] == 0


def test_annotation_ids_unique(data: Path) -> None:
    ids = [a["id"] for split in SPLITS for a in _load(data, f"instances_{split}.json")["annotations"]]
    assert len(ids) == len(set(ids))


# ------------------------------------------------------------------------------------------------
# Validity of every file
# ------------------------------------------------------------------------------------------------


def test_layout_and_categories(data: Path) -> None:
    marker = json.loads((data / MARKER_NAME).read_text())
    assert marker["train"] == TRAIN and marker["size"] == SIZE and marker["seed"] == SEED
    for split in SPLITS:
        assert len(list((data / split).glob("*.jpg"))) == (TRAIN if split == "train" else VAL)
        assert len(list((data / f"panoptic_{split}").glob("*.png"))) == (TRAIN if split == "train" else VAL)
    panoptic = _load(data, "panoptic_train.json")
    assert list(panoptic) == ["info", "licenses", "images", "annotations", "categories"]
    cats = {c["id"]: c for c in panoptic["categories"]}
    assert all(list(c) == ["supercategory", "color", "isthing", "id", "name"] for c in cats.values())
    things = [c["id"] for c in cats.values() if c["isthing"]]
    stuff = [c["id"] for c in cats.values() if not c["isthing"]]
    assert max(things) < min(stuff)  # things first, like COCO
    used = {s["category_id"] for split in SPLITS for a in _load(data, f"panoptic_{split}.json")["annotations"]
            for s in a["segments_info"]}  # fmt: skip
    assert len(used & set(things)) >= 8
    assert len(used & set(stuff)) >= 3


@pytest.mark.parametrize("split", SPLITS)
def test_panoptic_ids_match_png(data: Path, split: str) -> None:
    panoptic = _load(data, f"panoptic_{split}.json")
    for ann in panoptic["annotations"]:
        ids = _png_ids(data / f"panoptic_{split}" / ann["file_name"])
        listed = {s["id"] for s in ann["segments_info"]}
        present = set(np.unique(ids).tolist())
        assert present - {0} <= listed
        assert listed <= present


@pytest.mark.parametrize("split", SPLITS)
def test_captions_and_karpathy(data: Path, split: str) -> None:
    captions = _load(data, f"captions_{split}.json")
    per_image: dict[int, list[str]] = {}
    for ann in captions["annotations"]:
        per_image.setdefault(ann["image_id"], []).append(ann["caption"])
    assert set(per_image) == {im["id"] for im in captions["images"]}
    assert all(len(c) == 5 and len(set(c)) == 5 for c in per_image.values())
    karpathy = _load(data, "dataset_coco.json")
    assert karpathy["dataset"] == "coco"
    mine = [im for im in karpathy["images"] if im["split"] == split]
    assert {im["cocoid"]: [s["raw"] for s in im["sentences"]] for im in mine} == per_image
    for im in mine:
        assert im["filepath"] == split and (data / split / im["filename"]).is_file()
        assert im["sentids"] == [s["sentid"] for s in im["sentences"]]
        assert all(s["imgid"] == im["imgid"] and s["tokens"] for s in im["sentences"])
    sentids = [s["sentid"] for im in karpathy["images"] for s in im["sentences"]]
    assert len(sentids) == len(set(sentids))


class _PlainOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing {module}.{name}")


def test_refs_pickle_is_plain_and_matches_json(data: Path) -> None:
    raw = (data / "annotations" / "refs(synth).p").read_bytes()
    assert raw[:2] == b"\x80\x02"  # protocol 2, like the official files
    refs = _PlainOnly(io.BytesIO(raw)).load()
    assert refs == [ref for split in SPLITS for ref in _load(data, f"refs_{split}.json")]
    keys = ["ref_id", "image_id", "ann_id", "category_id", "split", "file_name", "sentences", "sent_ids"]
    assert all(list(r) == keys for r in refs)
    assert len({r["ref_id"] for r in refs}) == len(refs)
    # Canonical bytes (no string sharing that depends on which process built it), so workers cannot matter.
    assert pickle.dumps(json.loads(json.dumps(refs)), protocol=2) == raw


@pytest.mark.parametrize("split", SPLITS)
def test_refs_resolve_and_are_unique(data: Path, split: str) -> None:
    instances = {a["id"]: a for a in _load(data, f"instances_{split}.json")["annotations"]}
    refs = _load(data, f"refs_{split}.json")
    assert refs
    for ref in refs:
        assert ref["split"] == split and 1 <= len(ref["sentences"]) <= 3
        ann = instances[ref["ann_id"]]
        assert ann["image_id"] == ref["image_id"] and ann["category_id"] == ref["category_id"]
        mask = mask_utils.decode(ann["segmentation"]).astype(bool)
        scene = render_scene(SEED, *_index_of(ref["image_id"]), SIZE)
        (target,) = [t for t in scene.things if np.array_equal(scene.segment_ids == t.segment_id, mask)]
        assert _thirds(mask) == (target.hpos, target.vpos)
        assert ref["category_id"] == target.category_id
        for sentence in ref["sentences"]:
            assert sentence["tokens"] == sentence["sent"].split()
            stated = _parse(sentence["tokens"])
            assert [t for t in scene.things if _fits(stated, t)] == [target], sentence["sent"]


@pytest.mark.parametrize("split", SPLITS)
def test_absent_refs_name_nothing_present(data: Path, split: str) -> None:
    absent = _load(data, f"refs_absent_{split}.json")
    present_ids = {r["ref_id"] for s in SPLITS for r in _load(data, f"refs_{s}.json")}
    assert absent
    for ref in absent:
        assert ref["ann_id"] == -1 and ref["ref_id"] not in present_ids
        scene = render_scene(SEED, *_index_of(ref["image_id"]), SIZE)
        for sentence in ref["sentences"]:
            stated = _parse(sentence["tokens"])
            assert synthetic.THING_CATEGORY_IDS[stated["shape"]] == ref["category_id"]
            assert not any(_fits(stated, t) for t in scene.things), sentence["sent"]


@pytest.mark.parametrize("split", SPLITS)
def test_entity_spans_and_references(data: Path, split: str) -> None:
    entity = _load(data, f"entity_{split}.json")
    panoptic = _load(data, f"panoptic_{split}.json")
    segments = {a["image_id"]: {s["id"]: s for s in a["segments_info"]} for a in panoptic["annotations"]}
    assert {im["id"] for im in entity["images"]} == set(segments)
    references = thing_phrases = 0
    for ann in entity["annotations"]:
        sentence = ann["sentence"]
        assert ann["phrase"]
        for p in ann["phrase"]:
            assert sentence[p["start_idx"] : p["end_idx"]] == p["phrase"]
            seg = segments[ann["image_id"]][p["annotation_id"]]
            assert seg["category_id"] == p["category_id"]
            thing_phrases += p["category_id"] in synthetic.THING_CATEGORY_IDS.values()
            if "reference" in p:
                ref = p["reference"]
                assert ref["image_id"] != ann["image_id"] and ref["prob"] == 1.0
                assert segments[ref["image_id"]][ref["annotation_id"]]["category_id"] == p["category_id"]
                references += 1
    per_image = {}
    for ann in entity["annotations"]:
        per_image[ann["image_id"]] = per_image.get(ann["image_id"], 0) + 1
    assert max(per_image.values()) <= 2
    if split == "train":
        assert 0 < references < thing_phrases


# ------------------------------------------------------------------------------------------------
# Description logic
# ------------------------------------------------------------------------------------------------


def _thing(shape: str, colour: str, size: str, hpos: str, vpos: str, sid: int) -> Thing:
    return Thing(shape, colour, size, hpos, vpos, segment_id=sid, area=100)


def test_unique_descriptions_use_fewest_attributes() -> None:
    things = [
        _thing("circle", "red", "small", "left", "top", 1),
        _thing("circle", "red", "small", "right", "top", 2),
        _thing("circle", "blue", "large", "left", "top", 3),
        _thing("star", "red", "small", "center", "middle", 4),
    ]
    assert unique_descriptions(things, 3)[0] == Description("star")
    assert unique_descriptions(things, 2)[0] == Description("circle", colour="blue")
    assert unique_descriptions(things, 0)[0] == Description("circle", colour="red", hpos="left")
    twins = [things[0], _thing("circle", "red", "small", "left", "top", 5)]
    assert unique_descriptions(twins, 0) == []


# ------------------------------------------------------------------------------------------------
# The output folder
# ------------------------------------------------------------------------------------------------


def test_refuses_folder_it_did_not_write(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    precious = out / "notes.txt"
    precious.write_text("my notes")
    with pytest.raises(FileExistsError, match=str(out)):
        generate(out, 2, 1, 64, 0)
    assert precious.read_text() == "my notes"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_refuses_a_file(tmp_path: Path) -> None:
    out = tmp_path / "file"
    out.write_text("x")
    with pytest.raises(FileExistsError):
        generate(out, 1, 1, 64, 0)
    assert out.read_text() == "x"


def test_regenerates_its_own_folder(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    generate(out, 3, 1, 64, 0)
    extra = out / "README.txt"  # a user file next to the generated ones survives
    extra.write_text("kept")
    summary = generate(out, 2, 1, 64, 1)
    assert extra.read_text() == "kept"
    assert len(list((out / "train").glob("*.jpg"))) == 2  # no stale image from the first run
    assert summary.splits["train"].images == 2 and summary.splits["train"].captions == 10
    assert summary.out == out and summary.seconds > 0
    assert json.loads((out / MARKER_NAME).read_text())["seed"] == 1


def test_the_test_split_holds_other_images_than_val_with_ids_of_their_own(data: Path) -> None:
    val_ids = {image["id"] for image in _load(data, "panoptic_val.json")["images"]}
    test_ids = {image["id"] for image in _load(data, "panoptic_test.json")["images"]}
    assert len(test_ids) == VAL and not val_ids & test_ids
    assert min(test_ids) == synthetic.image_id_for("test", 0) == 200_000_001
    val_pixels = {p.read_bytes() for p in (data / "val").glob("*.jpg")}
    assert not val_pixels & {p.read_bytes() for p in (data / "test").glob("*.jpg")}
    karpathy = _load(data, "dataset_coco.json")["images"]
    assert sum(image["split"] == "test" for image in karpathy) == VAL
