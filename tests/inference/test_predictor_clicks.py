"""Clicks and boxes through the Predictor and ``findlit predict`` (the interactive task), on real photos."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from findlit.cli.main import main as findlit_main
from findlit.data.predict_config import request_problem
from findlit.inference.predictor import PredictError, Predictor
from tests.inference.test_predictor import PHOTOS, image_size, save_checkpoint
from tests.training.test_module import INTERFACE


def save_visual_checkpoint(path: Path) -> Path:
    """An untrained FINDModule with visual prompts (so with the interactive task), saved at ``path``."""
    return save_checkpoint(path, interface={**INTERFACE, "visual_prompts": True})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_visual_checkpoint(tmp_path_factory.mktemp("ckpt") / "visual.ckpt")


@pytest.fixture(scope="module")
def predictor(checkpoint: Path) -> Predictor:
    return Predictor.from_checkpoint(checkpoint, image_size=64, device="cpu")


def test_clicks_give_one_mask_and_each_box_one(predictor: Predictor) -> None:
    height, width = image_size(PHOTOS[0])
    prediction = predictor.predict(
        PHOTOS[0], points=[[width / 2, height / 2], [10, 10, 0]], boxes=[[5, 5, width / 3, height / 3]]
    )
    assert prediction.masks.shape == (2, height, width)
    assert prediction.labels == ["clicks (1+, 1-)", "box 0"]
    assert prediction.sources == ["visual", "visual"]
    assert all(0.0 <= score <= 1.0 for score in prediction.scores)


def test_set_image_once_then_many_prompts_gives_what_a_whole_prediction_gives(predictor: Predictor) -> None:
    height, width = image_size(PHOTOS[1])
    whole = predictor.predict(PHOTOS[1], points=[[width / 4, height / 4]])
    predictor.set_image(PHOTOS[1])
    encoder_calls = []
    hook = predictor.module.vision_encoder.register_forward_hook(lambda *args: encoder_calls.append(1))
    try:
        again = predictor.predict(points=[[width / 4, height / 4]])
        boxed = predictor.predict(boxes=[[0, 0, width / 2, height / 2]])
    finally:
        hook.remove()
    assert not encoder_calls  # the features were computed once, by set_image
    assert torch.equal(whole.masks, again.masks)
    assert boxed.masks.shape == (1, height, width)


@pytest.mark.parametrize(
    ("points", "boxes", "message"),
    [
        ([[5, 5, 0]], [], "negative clicks without a positive one"),
        ([[5]], [], "click 0 must be"),
        ([[5, 5, 2]], [], "click 0 must be"),
        ([], [[50, 10, 20, 40]], "box 0 .* needs x1 > x0"),
        ([], [[1, 2, 3]], r"box 0 must be \[x0, y0, x1, y1\]"),
    ],
)
def test_bad_clicks_and_boxes_are_refused(points: Any, boxes: Any, message: str) -> None:
    problem = request_problem([], points=points, boxes=boxes)
    assert problem is not None and problem[0] in ("points", "boxes")
    assert re.search(message, problem[1]), problem


def test_a_click_outside_the_image_names_it_and_the_image(predictor: Predictor) -> None:
    _, width = image_size(PHOTOS[0])
    with pytest.raises(
        PredictError, match=rf"points\[1\] at \({width + 5}, 3\) lies outside .*{PHOTOS[0].name}"
    ):
        predictor.predict(PHOTOS[0], points=[[3, 3], [width + 5, 3]])


def test_clicks_need_the_interactive_task(tmp_path: Path) -> None:
    plain = Predictor.from_checkpoint(save_checkpoint(tmp_path / "plain.ckpt"), image_size=64, device="cpu")
    with pytest.raises(PredictError, match="clicks need the interactive task"):
        plain.predict(PHOTOS[0], points=[[3, 3]])


def test_findlit_predict_with_clicks_and_a_box_writes_overlays(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code = findlit_main(
        [
            "predict",
            "--ckpt_path",
            str(checkpoint),
            "--images",
            *map(str, PHOTOS),
            "--points",
            "40,30",
            "60,50,0",
            "--boxes",
            "10,10,120,90",
            "--image_size",
            "64",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    for photo in PHOTOS:
        document = json.loads((out / f"{photo.stem}.json").read_text())
        assert [entry["label"] for entry in document["masks"]] == ["clicks (1+, 1-)", "box 0"]
        assert (out / f"{photo.stem}.png").is_file()
    assert (
        findlit_main(
            [
                "predict",
                "--ckpt_path",
                str(checkpoint),
                "--images",
                str(PHOTOS[0]),
                "--boxes",
                "10,10,5",
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "--boxes: '10,10,5' is not x0,y0,x1,y1" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
