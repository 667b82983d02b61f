"""Predictor: masks for free-text prompts and class names on the real COCO photos, written as overlays
and RLE JSON at each image's size; bad requests fail before anything runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L  # noqa: N812
import pytest
import torch
import yaml
from PIL import Image
from pycocotools import mask as mask_utils

import findlit
from findlit.encoders import EncoderConfig
from findlit.encoders.checkpoint import EncoderMismatchError
from findlit.encoders.registry import _REGISTRY, register
from findlit.inference.predictor import DEFAULT_IMAGE_SIZE, PredictError, Predictor, training_resize
from findlit.training.module import FINDModule
from tests.encoders.tiny import TinyText
from tests.fixtures import COCO_SAMPLE, other_encoder_checkpoint
from tests.training.test_module import INTERFACE, TASK_OPTIONS

if "tiny_test_text" not in _REGISTRY:
    register("tiny_test_text")(TinyText)

PHOTOS = sorted((COCO_SAMPLE / "val2017").glob("*.jpg"))
PROMPTS = ["the man jumping for the ball", "a tree on the left"]


def save_checkpoint(path: Path, interface: dict[str, Any] | None = None) -> Path:
    """An untrained FINDModule of the tiny test encoders saved as a Lightning checkpoint.

    ``interface``: its options (default: the tiny ``INTERFACE`` of tests/training/test_module.py).
    """
    torch.manual_seed(0)
    module = FINDModule(
        vision_encoder=EncoderConfig("tiny_test_vision"),
        text_encoder=EncoderConfig("tiny_test_text", {"dim": 8}),
        interface=INTERFACE if interface is None else interface,  # type: ignore[arg-type]
        task_options=TASK_OPTIONS,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=path.parent,
    )
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


@pytest.fixture(scope="module")
def predictor(checkpoint: Path) -> Predictor:
    return Predictor.from_checkpoint(checkpoint, image_size=64, device="cpu")


def image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.height, image.width


def check_outputs(out: Path, labels: list[str] | None = None) -> list[dict[str, Any]]:
    """Every photo has an overlay and a JSON of its size whose RLE masks decode to that size."""
    documents = []
    for photo in PHOTOS:
        height, width = image_size(photo)
        assert image_size(out / f"{photo.stem}.png") == (height, width)
        document = json.loads((out / f"{photo.stem}.json").read_text())
        assert (document["height"], document["width"]) == (height, width)
        assert document["masks"]
        for entry in document["masks"]:
            rle = dict(entry["segmentation"], counts=entry["segmentation"]["counts"].encode("ascii"))
            mask = mask_utils.decode(rle)
            assert mask.shape == (height, width)
            assert entry["area"] == int(mask.sum())
            assert 0.0 <= entry["score"] <= 1.0
        if labels is not None:
            assert [entry["label"] for entry in document["masks"]] == labels
        documents.append(document)
    return documents


def test_the_real_photos_are_there() -> None:
    assert len(PHOTOS) == 2


def test_prompts_on_the_real_photos(predictor: Predictor, tmp_path: Path) -> None:
    written = predictor.write(PHOTOS, tmp_path, PROMPTS)
    assert written == [(tmp_path / f"{p.stem}.png", tmp_path / f"{p.stem}.json") for p in PHOTOS]
    for document in check_outputs(tmp_path, PROMPTS):
        assert {entry["source"] for entry in document["masks"]} == {"prompt"}


def test_prediction_is_at_the_image_size(predictor: Predictor) -> None:
    prediction = predictor.predict(PHOTOS[0], PROMPTS)
    height, width = image_size(PHOTOS[0])
    assert prediction.size == (height, width)
    assert prediction.masks.shape == (len(PROMPTS), height, width)
    assert prediction.masks.dtype == torch.bool
    assert prediction.labels == PROMPTS and prediction.sources == ["prompt", "prompt"]


def test_classes_panoptic_and_instance(predictor: Predictor, checkpoint: Path, tmp_path: Path) -> None:
    panoptic = predictor.predict(PHOTOS[0], PROMPTS, ["person", "ball"], ["grass", "tree"])
    classes = [
        label for label, source in zip(panoptic.labels, panoptic.sources, strict=True) if source == "class"
    ]
    assert set(classes) <= {"person", "ball", "grass", "tree"}
    assert panoptic.labels[-2:] == PROMPTS
    if classes:  # panoptic segments do not overlap
        assert int(panoptic.masks[: len(classes)].sum(0).max()) <= 1

    instance = Predictor.from_checkpoint(
        checkpoint, image_size=64, device="cpu", mode="instance", min_score=0.0
    )
    instance.write(PHOTOS, tmp_path, PROMPTS, ["person", "ball"])
    for document in check_outputs(tmp_path):
        entries = document["masks"]
        assert {e["label"] for e in entries if e["source"] == "class"} <= {"person", "ball"}
        assert any(e["source"] == "class" for e in entries)
        assert [e["label"] for e in entries if e["source"] == "prompt"] == PROMPTS
    # the on-the-fly vocabulary stays out of the module
    assert instance.module.vocabularies == {}


def test_findlit_exports_the_predictor() -> None:
    assert findlit.Predictor is Predictor


@pytest.mark.parametrize(
    ("prompts", "classes", "message"),
    [
        ([], [], "prompt list is empty"),
        (["the cat", "  "], [], "prompt 1 is empty"),
        ([], ["person", ""], "class name 1 is empty"),
        ([], ["person", "person"], "more than once"),
        ("the cat", [], "lists of strings"),
    ],
)
def test_bad_prompts_are_refused(
    predictor: Predictor, tmp_path: Path, prompts: Any, classes: list[str], message: str
) -> None:
    with pytest.raises(PredictError, match=message):
        predictor.write(PHOTOS, tmp_path, prompts, classes)
    assert not list(tmp_path.iterdir())


def test_missing_image_is_named_before_running(predictor: Predictor, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.jpg"
    out = tmp_path / "out"
    with pytest.raises(PredictError, match=r"nowhere\.jpg"):
        predictor.write([PHOTOS[0], missing], out, PROMPTS)
    assert not out.exists()  # the first, good image did not run either
    with pytest.raises(PredictError, match=r"nowhere\.jpg"):
        predictor.predict(missing, PROMPTS)


def test_images_of_one_stem_are_refused(predictor: Predictor, tmp_path: Path) -> None:
    copy = tmp_path / "copy" / PHOTOS[0].name
    copy.parent.mkdir()
    copy.write_bytes(PHOTOS[0].read_bytes())
    with pytest.raises(PredictError, match=PHOTOS[0].stem):
        predictor.write([PHOTOS[0], copy], tmp_path / "out", PROMPTS)


def test_existing_output_is_refused_unless_overwrite(predictor: Predictor, tmp_path: Path) -> None:
    existing = tmp_path / f"{PHOTOS[1].stem}.json"
    existing.write_text("keep me")
    with pytest.raises(FileExistsError, match=str(existing)):
        predictor.write(PHOTOS, tmp_path, PROMPTS)
    assert existing.read_text() == "keep me"
    assert not (tmp_path / f"{PHOTOS[0].stem}.png").exists()
    predictor.write(PHOTOS, tmp_path, PROMPTS, overwrite=True)
    check_outputs(tmp_path, PROMPTS)


def test_checkpoint_of_other_encoders_is_refused(checkpoint: Path, tmp_path: Path) -> None:
    other = other_encoder_checkpoint(checkpoint, tmp_path)
    with pytest.raises(EncoderMismatchError, match=r"other_encoder\.ckpt(.|\n)*vision_encoder"):
        Predictor.from_checkpoint(other, image_size=64)
    with pytest.raises(FileNotFoundError, match=r"absent\.ckpt"):
        Predictor.from_checkpoint(tmp_path / "absent.ckpt")


def test_task_missing_from_the_checkpoint_is_named(tmp_path: Path) -> None:
    module = FINDModule(
        vision_encoder=EncoderConfig("tiny_test_vision"),
        text_encoder=EncoderConfig("tiny_test_text", {"dim": 8}),
        interface=INTERFACE,
        tasks=["segmentation"],
        task_options={"segmentation": {"num_points": 64}},
    )
    with pytest.raises(PredictError, match="grounding"):
        Predictor(module, image_size=64, device="cpu").predict(PHOTOS[0], PROMPTS)


def test_training_resize_from_the_checkpoint_or_the_run_config(tmp_path: Path) -> None:
    transforms = {"image_size": 96, "eval_shortest_edge": 80}
    hyper = {"val": [{"name": "a", "transforms": transforms}], "train": [{"transforms": {"image_size": 32}}]}
    assert training_resize({"datamodule_hyper_parameters": hyper}, tmp_path / "x.ckpt") == (96, 80)

    run = tmp_path / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    assert training_resize({}, run / "checkpoints" / "last.ckpt") == (None, None)
    config = {"data": {"train": [{"name": "a", "transforms": {"image_size": 48}}]}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert training_resize({}, run / "checkpoints" / "last.ckpt") == (48, None)


def test_resize_defaults_to_the_run_config(checkpoint: Path, tmp_path: Path) -> None:
    run = tmp_path / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    copy = run / "checkpoints" / "last.ckpt"
    copy.write_bytes(checkpoint.read_bytes())
    assert Predictor.from_checkpoint(copy, device="cpu").resize.longest_edge == DEFAULT_IMAGE_SIZE
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"val": [{"transforms": {"image_size": 96}}]}}))
    assert Predictor.from_checkpoint(copy, device="cpu").resize.longest_edge == 96
    assert Predictor.from_checkpoint(copy, image_size=64, device="cpu").resize.longest_edge == 64


def test_a_checkpoint_from_before_visual_entities_loads_as_it_was_trained(tmp_path: Path) -> None:
    """Saved before ``visual_prompt_p`` worked: no visual prompts, no ``visual_prompt_p`` in its options."""
    torch.manual_seed(0)
    module = FINDModule(
        vision_encoder=EncoderConfig("tiny_test_vision"),
        text_encoder=EncoderConfig("tiny_test_text", {"dim": 8}),
        interface=INTERFACE,  # type: ignore[arg-type]
        task_options={**TASK_OPTIONS, "interleave": {"num_points": 64, "visual_prompt_p": 0.0}},
    )
    assert module.interface.visual_prompt_encoder is None
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.strategy.connect(module)
    path = tmp_path / "old.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)
    del saved["hyper_parameters"]["task_options"]["interleave"]["visual_prompt_p"]  # as it was written then
    torch.save(saved, path)
    # rebuilt as a model of today (visual entities at 0.5), its weights would lack the encoder's
    with pytest.raises(RuntimeError, match="visual_prompt_encoder"):
        FINDModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    predictor = Predictor.from_checkpoint(path, image_size=64, device="cpu")
    interleave = predictor.module.tasks["interleave"]
    assert predictor.module.interface.visual_prompt_encoder is None
    assert getattr(interleave, "visual_prompt_p") == 0.0  # noqa: B009
    assert predictor.predict(PHOTOS[0], prompts=["a cat"]).masks.shape[0] == 1
