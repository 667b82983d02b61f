"""``findlit predict`` on image files: overlays and RLE JSON of the real photos; clear errors, before
running, for bad input; ``--config`` still reaches LightningCLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from findlit.cli import main
from tests.fixtures import other_encoder_checkpoint
from tests.inference.test_predictor import PHOTOS, PROMPTS, check_outputs, save_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


def predict(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["predict", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def arguments(checkpoint: Path, out: Path, *extra: str, images: list[Path] = PHOTOS) -> list[str]:
    return [
        "--ckpt_path",
        str(checkpoint),
        "--images",
        *map(str, images),
        "--out",
        str(out),
        "--image_size",
        "64",
        "--device",
        "cpu",
        *extra,
    ]


def test_a_folder_of_images_is_its_image_files(
    capsys: pytest.CaptureFixture[str], checkpoint: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in PHOTOS:
        (folder / photo.name).write_bytes(photo.read_bytes())
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    code, printed, err = predict(capsys, *arguments(checkpoint, out, "--prompts", *PROMPTS, images=[folder]))
    assert code == 0, err
    assert sorted(path.name for path in out.iterdir()) == sorted(
        f"{photo.stem}{suffix}" for photo in PHOTOS for suffix in (".json", ".png")
    )
    assert "notes" not in printed


def test_a_folder_without_images_is_named(
    capsys: pytest.CaptureFixture[str], checkpoint: Path, tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    code, _, err = predict(
        capsys, *arguments(checkpoint, out, "--prompts", "a cat", images=[tmp_path / "empty"])
    )
    assert code == 2
    assert err.startswith(f"findlit: config error: --images: folder {tmp_path / 'empty'} holds no image file")
    assert not out.exists()


def test_predict_writes_overlays_and_rle_json(
    capsys: pytest.CaptureFixture[str], checkpoint: Path, tmp_path: Path
) -> None:
    code, out, err = predict(
        capsys,
        *arguments(
            checkpoint, tmp_path, "--prompts", *PROMPTS, "--classes", "person,ball", "--stuff", "grass"
        ),
    )
    assert code == 0, err
    for photo in PHOTOS:
        assert str(tmp_path / f"{photo.stem}.png") in out and str(tmp_path / f"{photo.stem}.json") in out
    for document in check_outputs(tmp_path):
        entries = document["masks"]
        assert [e["label"] for e in entries if e["source"] == "prompt"] == PROMPTS
        assert {e["label"] for e in entries if e["source"] == "class"} <= {"person", "ball", "grass"}


def test_instance_mode(capsys: pytest.CaptureFixture[str], checkpoint: Path, tmp_path: Path) -> None:
    extra = ("--prompts", "the man", "--classes", "person", "--mode", "instance", "--min_score", "0")
    code, _, err = predict(capsys, *arguments(checkpoint, tmp_path, *extra, images=PHOTOS[:1]))
    assert code == 0, err
    entries = json.loads((tmp_path / f"{PHOTOS[0].stem}.json").read_text())["masks"]
    assert entries[-1]["label"] == "the man" and entries[0]["label"] == "person"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--prompts"], "prompt list is empty"),
        (["--prompts", "the cat", ""], "prompt 1 is empty"),
        (["--prompts", "the cat", "--classes", "person,,dog"], "class name 1 is empty"),
    ],
)
def test_bad_prompts(
    capsys: pytest.CaptureFixture[str], checkpoint: Path, tmp_path: Path, extra: list[str], message: str
) -> None:
    code, _, err = predict(capsys, *arguments(checkpoint, tmp_path / "out", *extra))
    assert code == 2
    assert message in err
    assert not (tmp_path / "out").exists()


def test_missing_image_is_named(capsys: pytest.CaptureFixture[str], checkpoint: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.jpg"
    argv = arguments(checkpoint, tmp_path / "out", "--prompts", "the cat", images=[PHOTOS[0], missing])
    code, _, err = predict(capsys, *argv)
    assert code == 2 and str(missing) in err
    assert not (tmp_path / "out").exists()


def test_missing_and_mismatched_checkpoints_are_named(
    capsys: pytest.CaptureFixture[str], checkpoint: Path, tmp_path: Path
) -> None:
    other = other_encoder_checkpoint(checkpoint, tmp_path)
    code, _, err = predict(capsys, *arguments(other, tmp_path / "out", "--prompts", "the cat"))
    assert code == 2 and str(other) in err and "vision_encoder" in err and "weights_digest" in err
    assert not (tmp_path / "out").exists()
    absent = tmp_path / "absent.ckpt"
    code, _, err = predict(capsys, *arguments(absent, tmp_path / "out", "--prompts", "the cat"))
    assert code == 2 and str(absent) in err


def test_existing_output_needs_overwrite(
    capsys: pytest.CaptureFixture[str], checkpoint: Path, tmp_path: Path
) -> None:
    overlay = tmp_path / f"{PHOTOS[0].stem}.png"
    overlay.write_bytes(b"not mine")
    argv = arguments(checkpoint, tmp_path, "--prompts", "the cat")
    code, _, err = predict(capsys, *argv)
    assert code == 2 and str(overlay) in err and "overwrite" in err
    assert overlay.read_bytes() == b"not mine"
    code, _, err = predict(capsys, *argv, "--overwrite")
    assert code == 0, err
    check_outputs(tmp_path, ["the cat"])


def test_config_goes_to_lightning_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    import findlit.cli.train

    received: list[Any] = []
    monkeypatch.setattr(findlit.cli.train, "run", lambda args: received.append(args) or 0)
    assert main(["predict", "--config", "x.yaml", "--ckpt_path", "y.ckpt"]) == 0
    assert main(["predict", "--config=x.yaml"]) == 0
    assert received == [
        ["predict", "--config", "x.yaml", "--ckpt_path", "y.ckpt"],
        ["predict", "--config=x.yaml"],
    ]


def test_help_names_the_image_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["predict", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for option in ("--ckpt_path", "--images", "--prompts", "--classes", "--out", "--overwrite", "--config"):
        assert option in out
