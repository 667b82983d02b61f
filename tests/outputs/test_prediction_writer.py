"""PredictionWriter: an overlay and an RLE JSON per image of ``data.predict`` in
``predictions/<name>/``, nothing overwritten unless asked, refused before any image runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import lightning as L  # noqa: N812
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from findlit.outputs.prediction_writer import PredictionWriter, existing_outputs
from findlit.outputs.test_results import OutputExistsError
from tests.training.test_module import predict_datamodule, tiny_encoder_module

PROMPTS = ["the man jumping for the ball", "a tree on the left"]


def predict(writer: PredictionWriter, coco_sample: Path, **fields: Any) -> L.LightningModule:
    module = tiny_encoder_module()
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        callbacks=[writer],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.predict(module, datamodule=predict_datamodule(coco_sample, 2, **fields), return_predictions=False)
    return module


def test_writes_an_overlay_and_rle_json_per_image(
    coco_sample: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    predict(PredictionWriter(directory=str(tmp_path)), coco_sample)
    folder = tmp_path / "predictions" / "photos"
    photos = sorted((coco_sample / "val2017").glob("*.jpg"))
    assert sorted(path.name for path in folder.iterdir()) == sorted(
        f"{photo.stem}{suffix}" for photo in photos for suffix in (".json", ".png")
    )
    for photo in photos:
        with Image.open(photo) as image:
            width, height = image.size
        with Image.open(folder / f"{photo.stem}.png") as overlay:
            assert overlay.size == (width, height)
        document = json.loads((folder / f"{photo.stem}.json").read_text())
        assert document["image"] == str(photo)
        assert (document["height"], document["width"]) == (height, width)
        assert [entry["label"] for entry in document["masks"] if entry["source"] == "prompt"] == PROMPTS
        for entry in document["masks"]:
            rle = dict(entry["segmentation"], counts=entry["segmentation"]["counts"].encode("ascii"))
            assert mask_utils.decode(rle).shape == (height, width)
    assert (
        f"predictions of photos: 2 images (overlay PNG + RLE JSON each) in {folder}"
        in capsys.readouterr().out
    )


def test_refuses_to_overwrite_before_any_image_runs(coco_sample: Path, tmp_path: Path) -> None:
    folder = tmp_path / "predictions" / "photos"
    folder.mkdir(parents=True)
    existing = folder / "000000439180.json"
    existing.write_text("keep me")
    module = tiny_encoder_module()
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        callbacks=[PredictionWriter(directory=str(tmp_path))],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with pytest.raises(OutputExistsError, match=r"000000439180\.json.*prediction_writer\.overwrite"):
        trainer.predict(module, datamodule=predict_datamodule(coco_sample, 2))
    assert cast(Any, module.vision_encoder).calls == 0  # no image ran
    assert existing.read_text() == "keep me"
    assert sorted(path.name for path in folder.iterdir()) == ["000000439180.json"]

    predict(PredictionWriter(directory=str(tmp_path), overwrite=True), coco_sample)
    assert json.loads(existing.read_text())["masks"]
    assert (folder / "000000142238.png").is_file()


def test_disabled_writes_nothing(coco_sample: Path, tmp_path: Path) -> None:
    predict(PredictionWriter(enabled=False, directory=str(tmp_path)), coco_sample)
    assert not (tmp_path / "predictions").exists()


def test_existing_outputs_names_a_few_and_counts_the_rest(tmp_path: Path) -> None:
    images = [tmp_path / f"{i}.jpg" for i in range(8)]
    folders = {"a": tmp_path / "out"}
    assert existing_outputs(folders, {"a": images}) is None
    folders["a"].mkdir()
    for image in images:
        (folders["a"] / f"{image.stem}.png").touch()
    message = existing_outputs(folders, {"a": images})
    assert message is not None
    assert str(folders["a"] / "0.png") in message and message.endswith("and 3 more")
