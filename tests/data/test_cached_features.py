"""Datasets and the DataModule reading cached vision features instead of images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from findlit.cli.config import build_datamodule
from findlit.data.collate import collate_samples
from findlit.data.config import feature_cache, read_records
from findlit.data.datamodule import MultiTaskDataModule
from findlit.data.feature_cache import IncompleteCacheError, StaleCacheError
from findlit.data.transforms import swap_left_right
from findlit.encoders.base import STRIDES
from findlit.errors import ConfigError
from tests.encoders.tiny import CHANNELS, TinyVision

ANN = "annotations/"
SIZE = 100  # the two COCO images (640x427, 640x360) resize to 100x67 and 100x56: two frame sizes


def datasets(cache_root: Path, image_size: int = SIZE, lsj: bool = False) -> list[dict[str, Any]]:
    transforms = {"image_size": image_size, "lsj": lsj}
    panoptic = {
        "panoptic_json": ANN + "panoptic_val2017.json",
        "panoptic_root": "panoptic_val2017",
        "image_root": "val2017",
    }
    return [
        {
            "name": "pan",
            "task": "segmentation",
            "format": "coco_panoptic",
            "paths": panoptic,
            "transforms": transforms,
            "features": str(cache_root / "panoptic"),
        },
        {
            "name": "cap",
            "task": "retrieval",
            "format": "coco_captions",
            "paths": {"captions_json": ANN + "captions_val2017.json", "image_root": "val2017"},
            "transforms": transforms,
            "features": str(cache_root / "captions"),
        },
        {
            "name": "ref",
            "task": "grounding",
            "format": "refcoco",
            "batch_size": 1,
            "paths": {
                "refs": ANN + "refs(umd).p",
                "instances_json": ANN + "panoptic_detection_format_val2017.json",
                "image_root": "val2017",
            },
            "transforms": transforms,
            "features": str(cache_root / "refs"),
        },
        {
            "name": "ent",
            "task": "interleave",
            "format": "find_entity",
            "paths": {
                "entity_json": ANN + "entity_val2017.json",
                **panoptic,
            },
            "transforms": transforms,
            "features": str(cache_root / "entities"),
        },
    ]


def make(root: Path, cache_root: Path, **kwargs: Any) -> MultiTaskDataModule:
    data: dict[str, Any] = {
        "root": str(root),
        "train": datasets(cache_root),
        "val": datasets(cache_root),
        "num_workers": 0,
        "steps_per_epoch": 6,
    }
    data.update(kwargs)
    return build_datamodule(data)


def fill(datamodule: MultiTaskDataModule, stage: str, encoder: TinyVision) -> int:
    """Fill every cache of ``stage`` as ``findlit cache`` does; returns the shards computed."""
    computed = 0
    for index, config in enumerate(datamodule.configs[stage]):
        key = f"data.{stage}[{index}]"
        records = read_records(config, key, datamodule.root)
        store = feature_cache(config, key, records, datamodule.root, datamodule.size_divisibility)
        computed += len(store.fill(encoder, shard_size=1).computed)
    return computed


@pytest.fixture(scope="module")
def caches(tmp_path_factory: pytest.TempPathFactory, coco_sample: Path) -> Path:
    """Caches of the four COCO-sample datasets (train and val share them: same records, same resize)."""
    cache_root = tmp_path_factory.mktemp("caches")
    datamodule = make(coco_sample, cache_root)
    encoder = TinyVision()
    assert fill(datamodule, "train", encoder) == 8
    assert fill(datamodule, "val", encoder) == 0, "val has the same records and resize: all reused"
    return cache_root


def image_datamodule(coco_sample: Path) -> MultiTaskDataModule:
    """The same datasets read from the images (no ``features``)."""
    configs = [{k: v for k, v in d.items() if k != "features"} for d in datasets(Path("unused"))]
    return build_datamodule({"root": str(coco_sample), "train": configs, "val": configs, "num_workers": 0})


# ---------------------------------------------------------------------------------------------


def test_lsj_with_features_is_a_config_error(coco_sample: Path, caches: Path) -> None:
    datamodule = make(coco_sample, caches, train=datasets(caches, lsj=True))
    with pytest.raises(ConfigError, match=r"data\.train\[0\]\.transforms\.lsj") as raised:
        datamodule.setup("fit")
    assert "data.train[0].features" in str(raised.value)
    # In evaluation lsj plays no part.
    make(coco_sample, caches, val=datasets(caches, lsj=True)).setup("validate")


def test_eval_samples_carry_features_and_targets_in_the_frame(coco_sample: Path, caches: Path) -> None:
    cached = make(coco_sample, caches)
    cached.setup("validate")
    plain = image_datamodule(coco_sample)
    plain.setup("validate")
    for with_features, with_image in zip(
        cached.stage_datasets("val"), plain.stage_datasets("val"), strict=True
    ):
        for index in range(len(with_image)):
            sample, reference = with_features[index], with_image[index]
            assert "image" not in sample
            height, width = reference["image"].shape[1:]
            assert sample["image_size"] == (height, width)
            assert sample["orig_size"] == reference["orig_size"]
            frame = (-(-height // 32) * 32, -(-width // 32) * 32)
            assert tuple(sample["padding_mask"].shape) == frame
            assert not sample["padding_mask"][:height, :width].any()
            assert sample["padding_mask"].sum() == frame[0] * frame[1] - height * width
            for level, value in sample["features"].items():
                assert value.shape == (
                    CHANNELS[level],
                    frame[0] // STRIDES[level],
                    frame[1] // STRIDES[level],
                )
            if "masks" in reference:
                assert sample["masks"].shape[-2:] == frame
                assert torch.equal(sample["masks"][:, :height, :width], reference["masks"])
                assert not sample["masks"][:, height:].any() and not sample["masks"][:, :, width:].any()
            if "ignore_mask" in reference:
                assert torch.equal(sample["ignore_mask"][:height, :width], reference["ignore_mask"])
                assert sample["ignore_mask"][height:].all() and sample["ignore_mask"][:, width:].all()
            for key in ("labels", "captions", "sentences", "entities"):
                if key in reference:
                    assert str(sample[key]) == str(reference[key])  # type: ignore[literal-required]


def test_cached_batch_features_equal_fresh_encoder_output(coco_sample: Path, caches: Path) -> None:
    cached = make(coco_sample, caches)
    cached.setup("validate")
    plain = image_datamodule(coco_sample)
    plain.setup("validate")
    encoder = TinyVision()
    for index in range(2):
        batch = collate_samples([cached.stage_datasets("val")[0][index]])
        fresh_batch = collate_samples([plain.stage_datasets("val")[0][index]])
        assert "images" not in batch and "features" in batch
        fresh = encoder(fresh_batch["images"].float() / 255)
        assert torch.equal(batch["padding_mask"], fresh_batch["padding_mask"])
        for level, value in batch["features"].items():
            assert value.dtype == torch.float16
            torch.testing.assert_close(value.float(), fresh[level], rtol=1e-3, atol=2e-3)


def flipped_and_unflipped(datamodule: MultiTaskDataModule, dataset: int) -> tuple[dict, dict]:
    """A training sample whose flip fired, and the same sample with the evaluation pipeline."""
    train = datamodule.stage_datasets("train")[dataset]
    reference = datamodule.stage_datasets("val")[dataset][0]
    for seed in range(50):
        sample = train[(0, seed)]
        if not torch.equal(sample["features"]["res2"], reference["features"]["res2"]):
            return dict(sample), dict(reference)
    raise AssertionError("the flip never fired in 50 seeds")


def test_training_flip_mirrors_features_masks_and_texts(coco_sample: Path, caches: Path) -> None:
    datamodule = make(coco_sample, caches)
    datamodule.setup("fit")
    for dataset in range(4):
        flipped, plain = flipped_and_unflipped(datamodule, dataset)
        assert flipped["image_size"] == plain["image_size"]
        # The whole padded frame is mirrored: the padding moves to the left, as padding_mask says.
        assert torch.equal(flipped["padding_mask"], plain["padding_mask"].flip(-1))
        height, width = flipped["image_size"]
        left = flipped["padding_mask"].shape[1] - width
        assert left > 0 and flipped["padding_mask"][:, :left].all()
        assert not flipped["padding_mask"][:height, left:].any()
        for level in STRIDES:
            assert torch.equal(flipped["features"][level], plain["features"][level].flip(-1))
        if "masks" in plain:
            assert torch.equal(flipped["masks"], plain["masks"].flip(-1))
            assert not flipped["masks"][:, :, :left].any()
        if "ignore_mask" in plain:
            assert torch.equal(flipped["ignore_mask"], plain["ignore_mask"].flip(-1))
        if "captions" in plain:  # training draws one caption, with left and right swapped
            assert flipped["captions"][0] in [swap_left_right(c) for c in plain["captions"]]
        if "entities" in plain:
            assert [e["sentence"] for e in flipped["entities"]] == [
                swap_left_right(e["sentence"]) for e in plain["entities"]
            ]


def test_flip_disabled_leaves_training_samples_as_evaluation_ones(coco_sample: Path, caches: Path) -> None:
    configs = datasets(caches)
    for config in configs:
        config["transforms"]["flip"] = False
    datamodule = make(coco_sample, caches, train=configs)
    datamodule.setup("fit")
    sample, reference = datamodule.stage_datasets("train")[0][(1, 7)], datamodule.stage_datasets("val")[0][1]
    for level in STRIDES:
        assert torch.equal(sample["features"][level], reference["features"][level])
    assert torch.equal(sample["masks"], reference["masks"])


def test_collate_pads_features_per_level_with_a_stride_consistent_padding_mask(
    coco_sample: Path, caches: Path
) -> None:
    datamodule = make(coco_sample, caches)
    datamodule.setup("validate")
    samples = [datamodule.stage_datasets("val")[0][i] for i in range(2)]
    frames = [tuple(s["padding_mask"].shape) for s in samples]
    assert frames[0] != frames[1], "the fixture should have two frame sizes"
    batch = collate_samples(samples)
    height, width = max(f[0] for f in frames), max(f[1] for f in frames)
    assert batch["padding_mask"].shape == (2, height, width)
    assert batch["image_sizes"] == [s["image_size"] for s in samples]
    for row, (sample, (h, w)) in enumerate(zip(samples, frames, strict=True)):
        assert torch.equal(batch["padding_mask"][row, :h, :w], sample["padding_mask"])
        assert batch["padding_mask"][row, h:].all() and batch["padding_mask"][row, :, w:].all()
        assert batch["targets"][row]["masks"].shape[-2:] == (height, width)
        for level, stride in STRIDES.items():
            value = batch["features"][level]
            assert value.shape == (2, CHANNELS[level], height // stride, width // stride)
            assert torch.equal(value[row, :, : h // stride, : w // stride], sample["features"][level])
            assert not value[row, :, h // stride :].any() and not value[row, :, :, w // stride :].any()
        assert "features" not in batch["targets"][row] and "padding_mask" not in batch["targets"][row]


def test_mixing_images_and_features_in_a_batch_is_an_error(coco_sample: Path, caches: Path) -> None:
    cached = make(coco_sample, caches)
    cached.setup("validate")
    plain = image_datamodule(coco_sample)
    plain.setup("validate")
    with pytest.raises(ValueError, match="cannot mix"):
        collate_samples([cached.stage_datasets("val")[0][0], plain.stage_datasets("val")[0][1]])


@pytest.mark.parametrize("workers", [0, 1])
def test_datamodule_loaders_yield_feature_batches(coco_sample: Path, caches: Path, workers: int) -> None:
    datamodule = make(coco_sample, caches, num_workers=workers)
    datamodule.setup("fit")
    batches = list(datamodule.train_dataloader())
    assert len(batches) == 6
    for batch in batches:
        assert "images" not in batch
        assert set(batch["features"]) == set(STRIDES)
        size = len(batch["image_ids"])
        height, width = batch["padding_mask"].shape[1:]
        assert height % 32 == 0 and width % 32 == 0 and max(height, width) <= 128
        assert batch["features"]["res5"].shape == (size, CHANNELS["res5"], height // 32, width // 32)
    for loader, name in zip(datamodule.val_dataloader(), datamodule.names("val"), strict=True):
        seen = [b for b in loader]
        assert {b["dataset"] for b in seen} == {name}
        assert sum(len(b["image_ids"]) for b in seen) == 2
        assert all("features" in b and "images" not in b for b in seen)


def test_stale_cache_is_an_error_at_setup(coco_sample: Path, caches: Path) -> None:
    datamodule = make(coco_sample, caches, train=[], val=datasets(caches, image_size=SIZE + 28))
    with pytest.raises(StaleCacheError) as raised:
        datamodule.setup("validate")
    message = str(raised.value)
    assert f"preprocessing.image_size: {SIZE} != {SIZE + 28}" in message
    assert "data.val[0].features" in message and str(caches / "panoptic") in message


def test_changed_padding_multiple_is_stale(coco_sample: Path, caches: Path) -> None:
    datamodule = make(coco_sample, caches, train=[], size_divisibility=64)
    with pytest.raises(StaleCacheError, match=r"preprocessing\.size_divisibility: 32 != 64"):
        datamodule.setup("validate")


def test_padding_multiple_must_suit_the_encoders(coco_sample: Path, caches: Path) -> None:
    datamodule = make(coco_sample, caches, train=[], size_divisibility=48)
    with pytest.raises(ConfigError, match=r"data\.size_divisibility must be a positive multiple of 32"):
        datamodule.setup("validate")


def test_missing_cache_is_an_error_at_setup(coco_sample: Path, tmp_path: Path) -> None:
    datamodule = make(coco_sample, tmp_path / "nothing", train=[])
    with pytest.raises(IncompleteCacheError, match=r"no feature cache .*data\.val\[0\]\.features"):
        datamodule.setup("validate")


def test_model_checks_the_encoder_of_the_cached_features(coco_sample: Path, caches: Path) -> None:
    datamodule = make(coco_sample, caches)
    datamodule.setup("fit")
    datamodule.check_feature_encoder(TinyVision().spec)
    with pytest.raises(StaleCacheError, match=r"encoder\.weights_digest") as raised:
        datamodule.check_feature_encoder(TinyVision(seed=3).spec)
    assert "data.train[0].features" in str(raised.value)
