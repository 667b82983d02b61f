"""Clicks, boxes and scribbles through the Predictor and ``findlit predict`` (interactive task), on photos."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from findlit.cli.main import main as findlit_main
from findlit.data.predict_config import PredictConfig, check_predict_config, request_problem
from findlit.errors import ConfigError, DataError
from findlit.inference.predictor import PredictError, Predictor
from findlit.tasks.interactive import _touched
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


# -- scribbles -----------------------------------------------------------------------------------------


def scribble_of(photo: Path, rows: slice = slice(20, 22), cols: slice = slice(10, 90)) -> np.ndarray:
    """A 2-pixel-thick horizontal stroke on ``photo``'s frame."""
    height, width = image_size(photo)
    mask = np.zeros((height, width), dtype=bool)
    mask[rows, cols] = True
    return mask


def save_scribble(mask: np.ndarray, path: Path) -> Path:
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    return path


def test_a_scribble_prompts_one_object_from_an_array_or_a_file(predictor: Predictor, tmp_path: Path) -> None:
    height, width = image_size(PHOTOS[0])
    mask = scribble_of(PHOTOS[0])
    from_array = predictor.predict(PHOTOS[0], scribbles=[mask])
    from_file = predictor.predict(PHOTOS[0], scribbles=[save_scribble(mask, tmp_path / "s.png")])
    assert from_array.masks.shape == (1, height, width)
    assert from_array.labels == ["scribble 0"] and from_array.sources == ["visual"]
    assert torch.equal(from_array.masks, from_file.masks)
    elsewhere = predictor.predict(
        PHOTOS[0], scribbles=[scribble_of(PHOTOS[0], slice(200, 300), slice(300, 400))]
    )
    assert not torch.equal(elsewhere.masks, from_array.masks)  # the mask follows the scribble


def test_a_thin_scribble_keeps_every_stroke_at_the_input_size() -> None:
    line = np.zeros((480, 640), dtype=bool)
    line[100, 37:600] = True  # one pixel thick: a nearest resize to 48 x 64 would keep none of it
    cells = _touched(line, (48, 64))  # cells of 10 x 10 pixels
    assert cells[10, 3:60].all() and cells.sum() == 57  # columns 37..599 touch cells 3..59 of row 10


def test_bad_scribbles_are_refused(predictor: Predictor) -> None:
    height, width = image_size(PHOTOS[0])
    empty = np.zeros((height, width), dtype=bool)
    assert request_problem([], scribbles=[empty]) == ("scribbles", "scribble 0 is empty: it marks no pixel")
    problem = request_problem([], scribbles=[np.ones((2, 3, 3), dtype=bool)])
    assert problem is not None and problem[0] == "scribbles" and "must be a mask [H, W]" in problem[1]
    with pytest.raises(PredictError, match=r"^scribbles: scribble 0 is empty"):
        predictor.predict(PHOTOS[0], scribbles=[empty])
    wrong = np.ones((height // 2, width), dtype=bool)
    with pytest.raises(
        PredictError, match=rf"scribbles\[0\] is {height // 2}x{width} .*{PHOTOS[0].name} is {height}x{width}"
    ):
        predictor.predict(PHOTOS[0], scribbles=[wrong])


def test_a_predict_entry_reads_its_scribble_files_under_its_root(tmp_path: Path) -> None:
    mask = scribble_of(PHOTOS[0])
    save_scribble(mask, tmp_path / "s.png")
    config = PredictConfig(name="p", images=["a.jpg"], scribbles=["s.png"])
    request = config.request("data.predict[0]", root=tmp_path)
    assert len(request.scribbles) == 1 and np.array_equal(request.scribbles[0], mask)
    with pytest.raises(DataError, match=r"image file not found.*missing\.png.*data\.predict\[0\]\.scribbles"):
        PredictConfig(name="p", images=["a.jpg"], scribbles=["missing.png"]).request(
            "data.predict[0]", tmp_path
        )
    with pytest.raises(ConfigError, match=r"data\.predict\[0\]\.scribbles: must be a list"):
        check_predict_config(PredictConfig(name="p", images=["a.jpg"], scribbles="s.png"), "data.predict[0]")  # type: ignore[arg-type]
    # scribbles alone are something to predict
    check_predict_config(PredictConfig(name="p", images=["a.jpg"], scribbles=["s.png"]), "data.predict[0]")


def test_findlit_predict_with_a_scribble_file(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scribble = save_scribble(scribble_of(PHOTOS[0]), tmp_path / "scribble.png")
    out = tmp_path / "out"
    args = ["predict", "--ckpt_path", str(checkpoint), "--images", str(PHOTOS[0]), "--image_size", "64"]
    assert findlit_main([*args, "--scribbles", str(scribble), "--out", str(out)]) == 0
    document = json.loads((out / f"{PHOTOS[0].stem}.json").read_text())
    assert [entry["label"] for entry in document["masks"]] == ["scribble 0"]
    capsys.readouterr()
    assert findlit_main([*args, "--scribbles", str(tmp_path / "none.png"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--scribbles: cannot read scribble 0" in err and "none.png" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()
