"""load_torch_file: data-only loads, and one line naming the file for each kind of unusable file."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import pytest
import torch

from findlit.errors import CheckpointError
from findlit.torch_files import (
    DamagedTorchFileError,
    NotATorchFileError,
    UnsafeTorchFileError,
    load_torch_file,
)

CONTENT = {"state_dict": {"weight": torch.arange(6.0).reshape(2, 3)}, "epoch": 3}


class RunsCode:
    """Unpickling this calls ``os.system``: what a hostile checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def saved(path: Path, obj: object = CONTENT, legacy: bool = False) -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def message(path: Path, kind: type[CheckpointError] = CheckpointError) -> str:
    with pytest.raises(kind) as caught:
        load_torch_file(path)
    text = str(caught.value)
    assert "\n" not in text and str(path) in text
    assert "weights_only=False" not in text  # never the advice to run a file's code
    return text


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("mmap", [False, True])
def test_a_checkpoint_loads_as_it_was_saved(tmp_path: Path, legacy: bool, mmap: bool) -> None:
    loaded = load_torch_file(saved(tmp_path / "run.ckpt", legacy=legacy), mmap=mmap)
    assert loaded["epoch"] == 3
    assert torch.equal(loaded["state_dict"]["weight"], CONTENT["state_dict"]["weight"])


def test_missing_file_and_folder(tmp_path: Path) -> None:
    assert "no such file" in message(tmp_path / "absent.ckpt")
    assert "is a folder" in message(tmp_path)


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (b"", "empty"),
        (json.dumps({"state_dict": {}}).encode(), "JSON"),
        (b"epoch: 3\nweights: here\n", "text file"),
        (b"\x89PNG\r\n\x1a\n" + bytes(64), "image"),
        (bytes(range(1, 64)), "neither a zip archive nor a pickle stream"),
    ],
)
def test_not_a_torch_file_says_what_it_looks_like(tmp_path: Path, content: bytes, said: str) -> None:
    path = tmp_path / "model.ckpt"
    path.write_bytes(content)
    assert said in message(path, NotATorchFileError)


def test_a_zip_archive_of_something_else(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "not a model")
    assert "no data.pkl" in message(path, NotATorchFileError)


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("kept", [0.3, 0.9])
def test_truncated_checkpoint(tmp_path: Path, legacy: bool, kept: float) -> None:
    path = saved(tmp_path / "run.ckpt", {"w": torch.zeros(4096)}, legacy=legacy)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * kept)])
    assert "truncated or damaged" in message(path, DamagedTorchFileError)


@pytest.mark.parametrize("legacy", [False, True])
def test_a_file_that_would_run_code_is_refused_without_running_it(tmp_path: Path, legacy: bool) -> None:
    marker = tmp_path / "code-ran"
    path = saved(tmp_path / "evil.ckpt", {"state_dict": {}, "payload": RunsCode(marker)}, legacy=legacy)
    text = message(path, UnsafeTorchFileError)
    assert "refused" in text and "could run code" in text
    # torch names where it stopped: the user learns what the file wanted to call
    assert "system" in text
    assert not marker.exists()


def test_the_name_of_the_file_is_the_callers(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    path.write_text("hello")
    with pytest.raises(NotATorchFileError, match=r"^model\.vision_encoder weights .*weights\.pt: "):
        load_torch_file(path, what="model.vision_encoder weights")
