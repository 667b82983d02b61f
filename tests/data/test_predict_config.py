"""``data.predict``: entries of image files and folders with prompts and class names, checked with
errors that name the key, and the DataModule's prediction loaders over the real COCO photos."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from findlit.cli.config import build_datamodule, load_data_section
from findlit.data.datamodule import MultiTaskDataModule
from findlit.data.decode import read_rgb
from findlit.data.predict_config import (
    PredictConfig,
    PredictRequest,
    find_images,
    image_files,
    request_problem,
)
from findlit.data.predict_dataset import PREDICT_TASK, read_upright_image
from findlit.errors import ConfigError, DataError
from tests.fixtures import COCO_SAMPLE, REPO

PREDICT_PARTIAL = REPO / "configs" / "predict" / "coco_sample.yaml"
PROMPTS = ["the man jumping for the ball", "a tree on the left"]


def entry(**fields: Any) -> dict[str, Any]:
    return {"name": "photos", "images": ["val2017"], "prompts": PROMPTS, "image_size": 64} | fields


def make(root: Path, *entries: dict[str, Any], **data: Any) -> MultiTaskDataModule:
    return build_datamodule({"root": str(root), "num_workers": 0, "predict": list(entries)} | data)


def test_a_folder_lists_its_images_by_name(coco_sample: Path) -> None:
    datamodule = make(coco_sample, entry())
    datamodule.setup("predict")
    [dataset] = datamodule.predict_datasets()
    assert dataset.files == sorted((coco_sample / "val2017").glob("*.jpg"))
    assert dataset.request == PredictRequest(PROMPTS, [], [], "panoptic", 0.5)
    assert datamodule.names("predict") == ["photos"]


def test_files_and_folders_mix_and_absolute_paths_ignore_the_root(coco_sample: Path, tmp_path: Path) -> None:
    folder = tmp_path / "more"
    folder.mkdir()
    shutil.copy(coco_sample / "val2017" / "000000142238.jpg", folder / "a.jpg")
    (folder / "notes.txt").write_text("not an image")
    photo = coco_sample / "val2017" / "000000439180.jpg"
    datamodule = make(coco_sample, entry(images=[str(photo), str(folder)]))
    datamodule.setup("predict")
    assert datamodule.predict_datasets()[0].files == [photo, folder / "a.jpg"]


def test_an_entry_root_wins_over_data_root(coco_sample: Path, tmp_path: Path) -> None:
    datamodule = make(tmp_path, entry(root=str(coco_sample), images=["val2017/000000142238.jpg"]))
    datamodule.setup("predict")
    assert datamodule.predict_datasets()[0].files == [coco_sample / "val2017" / "000000142238.jpg"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"prompts": []}, r"data\.predict\[0\]\.prompts: nothing to predict"),
        ({"prompts": ["the cat", " "]}, r"data\.predict\[0\]\.prompts: prompt 1 is empty"),
        ({"classes": ["person", "person"]}, r"data\.predict\[0\]\.classes: class names given more than once"),
        ({"classes": ["person"], "stuff": ["person"]}, r"data\.predict\[0\]\.classes: .*more than once"),
        (
            {"prompts": [], "stuff": ["sky"], "mode": "instance"},
            r"data\.predict\[0\]\.classes: instance mode",
        ),
        ({"images": []}, r"data\.predict\[0\]\.images: no image file or folder given"),
        ({"name": "a/b"}, r"data\.predict\[0\]\.name: must be a plain folder name"),
        ({"batch_size": 0}, r"data\.predict\[0\]\.batch_size must be positive"),
        ({"image_size": 0}, r"data\.predict\[0\]\.image_size must be > 0"),
        ({"min_score": 2.0}, r"data\.predict\[0\]\.min_score must be in \[0, 1\]"),
    ],
)
def test_bad_requests_are_refused_when_the_datamodule_is_built(
    coco_sample: Path, fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        make(coco_sample, entry(**fields))


def test_unknown_key_and_wrong_types_are_named_by_the_parser(coco_sample: Path) -> None:
    with pytest.raises(ConfigError, match="promts"):
        make(coco_sample, entry(promts=["a typo"]))
    with pytest.raises(ConfigError, match="mode"):
        make(coco_sample, entry(mode="semantic"))


def test_duplicate_names_are_refused(coco_sample: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"data\.predict: dataset names must be unique, repeated: \['photos'\]"
    ):
        make(coco_sample, entry(), entry(prompts=["the sky"]))


def test_missing_file_and_folder_are_named_before_any_image_is_read(coco_sample: Path) -> None:
    datamodule = make(coco_sample, entry(images=["val2017/000000142238.jpg", "nowhere.jpg"]))
    with pytest.raises(
        ConfigError, match=r"data\.predict\[0\]\.images\[1\]: no such file or folder: .*nowhere\.jpg"
    ):
        datamodule.setup("predict")
    datamodule = make(coco_sample, entry(), entry(name="more", images=["no_folder"]))
    with pytest.raises(ConfigError, match=r"data\.predict\[1\]\.images\[0\]: .*no_folder"):
        datamodule.setup("predict")


def test_folder_without_images_is_refused(coco_sample: Path) -> None:
    datamodule = make(coco_sample, entry(images=["annotations"]))
    with pytest.raises(
        ConfigError, match=r"data\.predict\[0\]\.images\[0\]: folder .*annotations holds no image"
    ):
        datamodule.setup("predict")


def test_images_of_one_stem_are_refused(coco_sample: Path, tmp_path: Path) -> None:
    # the same stem with another suffix: both would write 000000142238.png and .json
    (tmp_path / "000000142238.png").write_bytes((coco_sample / "val2017" / "000000142238.jpg").read_bytes())
    datamodule = make(coco_sample, entry(images=["val2017", str(tmp_path / "000000142238.png")]))
    with pytest.raises(
        ConfigError, match=r"data\.predict\[0\]\.images: images share a file stem.*000000142238"
    ):
        datamodule.setup("predict")


def test_find_images_lists_every_problem_and_image_files_raises_the_first(
    coco_sample: Path, tmp_path: Path
) -> None:
    """``findlit data check`` reports them all; building the dataset stops at the first."""
    other = tmp_path / "000000142238.png"
    other.write_bytes((coco_sample / "val2017" / "000000142238.jpg").read_bytes())
    config = PredictConfig(
        name="photos", images=["nowhere.jpg", "val2017", "annotations", str(other)], prompts=PROMPTS
    )
    files, problems = find_images(config, "data.predict[0]", coco_sample)
    assert files == [*sorted((coco_sample / "val2017").glob("*.jpg")), other]
    assert len(problems) == 3
    assert problems[0] == f"data.predict[0].images[0]: no such file or folder: {coco_sample / 'nowhere.jpg'}"
    assert problems[1].startswith(f"data.predict[0].images[2]: folder {coco_sample / 'annotations'} holds no")
    assert problems[2].startswith("data.predict[0].images: images share a file stem")
    assert problems[2].endswith(f"(000000142238: {coco_sample / 'val2017' / '000000142238.jpg'}, {other})")
    with pytest.raises(ConfigError) as caught:
        image_files(config, "data.predict[0]", coco_sample)
    assert str(caught.value) == problems[0]
    assert find_images(PredictConfig(name="photos", images=["val2017"]), "k", coco_sample)[1] == []


def test_predicting_needs_an_entry(coco_sample: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.predict: predicting needs at least one entry"):
        make(coco_sample).setup("predict")


def test_the_resize_defaults_to_the_evaluation_datasets(coco_sample: Path) -> None:
    val = {
        "name": "pan",
        "task": "segmentation",
        "format": "coco_panoptic",
        "paths": {
            "panoptic_json": "annotations/panoptic_val2017.json",
            "panoptic_root": "panoptic_val2017",
            "image_root": "val2017",
        },
        "transforms": {"image_size": 96, "eval_shortest_edge": 80},
    }
    datamodule = make(coco_sample, entry(image_size=None), entry(name="own", image_size=48), val=[val])
    datamodule.setup("predict")
    inherited, own = datamodule.predict_datasets()
    assert (inherited.resize.longest_edge, inherited.resize.shortest_edge) == (96, 80)
    assert (own.resize.longest_edge, own.resize.shortest_edge) == (48, None)
    alone = make(coco_sample, entry(image_size=None))
    alone.setup("predict")
    assert alone.predict_datasets()[0].resize.longest_edge == 1024


def test_batches_carry_the_request_the_pixels_and_a_square_frame(coco_sample: Path) -> None:
    request = {"classes": ["person"], "stuff": ["sky"], "image_size": 100, "batch_size": 2}
    datamodule = make(
        coco_sample, entry(**request), entry(name="tight", image_size=100, pad_to_square=False, batch_size=1)
    )
    datamodule.setup("predict")
    square, tight = (list(loader) for loader in datamodule.predict_dataloader())
    [batch] = square
    assert batch["task"] == PREDICT_TASK and batch["dataset"] == "photos"
    assert batch["request"] == PredictRequest(PROMPTS, ["person"], ["sky"], "panoptic", 0.5)
    # 640x427 -> 100x67 and 640x360 -> 100x56, both in a 128x128 frame (100 rounded up to 32)
    assert batch["images"].shape == (2, 3, 128, 128)
    assert batch["image_sizes"] == [(67, 100), (56, 100)]
    assert batch["orig_sizes"] == [(427, 640), (360, 640)]
    for target, file in zip(batch["targets"], sorted((coco_sample / "val2017").glob("*.jpg")), strict=True):
        assert target["file"] == str(file)
        # the full-size image stays a NumPy array: Lightning moves tensors to the device, not these
        assert isinstance(target["pixels"], np.ndarray) and target["pixels"].dtype == np.uint8
        assert target["pixels"].shape[0] == 3
    # without the square, each batch of one is padded to its own image only
    assert [tuple(b["images"].shape[2:]) for b in tight] == [(96, 128), (64, 128)]


def test_ranks_predict_disjoint_shards(coco_sample: Path) -> None:
    seen = []
    for rank in range(2):
        datamodule = make(coco_sample, entry(batch_size=2))

        class _Trainer:
            world_size = 2
            global_rank = rank

            class _accelerator_connector:  # noqa: N801
                use_distributed_sampler = False

        datamodule.trainer = _Trainer()  # type: ignore[assignment]
        datamodule.setup("predict")
        [loader] = datamodule.predict_dataloader()
        seen.append([target["file"] for batch in loader for target in batch["targets"]])
    assert [len(files) for files in seen] == [1, 1]
    assert sorted(seen[0] + seen[1]) == [str(p) for p in sorted((coco_sample / "val2017").glob("*.jpg"))]


def test_an_unreadable_image_names_the_file_and_key(coco_sample: Path, tmp_path: Path) -> None:
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    datamodule = make(coco_sample, entry(images=[str(tmp_path / "broken.jpg")]))
    datamodule.setup("predict")
    with pytest.raises(DataError, match=r"broken\.jpg.*data\.predict\[0\]\.images"):
        datamodule.predict_datasets()[0][0]


def test_the_coco_sample_partial_builds_on_the_demo_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """``configs/predict/coco_sample.yaml`` after ``configs/demo.yaml``: the two real photos, with the
    demo's evaluation resize and its own root (the demo's data.root is untouched)."""
    monkeypatch.chdir(REPO)  # relative roots are taken from the working directory
    data = load_data_section([str(REPO / "configs" / "demo.yaml"), str(PREDICT_PARTIAL)])
    assert data["root"] == "data/demo"
    datamodule = build_datamodule(data)
    [dataset] = datamodule.predict_datasets()
    # both sides resolved: ../shared may be a symbolic link
    assert [file.resolve() for file in dataset.files] == sorted(
        file.resolve() for file in (COCO_SAMPLE / "val2017").glob("*.jpg")
    )
    assert dataset.request.prompts and dataset.request.classes and dataset.request.stuff
    assert dataset.resize.longest_edge == 128  # the demo's evaluation size


def test_request_problem_is_shared_with_the_predictor() -> None:
    assert request_problem(["the cat"]) is None
    assert request_problem([], ["person"], mode="instance") is None
    assert request_problem("the cat") == (
        "prompts",
        "prompts, classes and stuff must be lists of strings, not one string",
    )
    assert request_problem(["x"], mode="semantic") == (
        "mode",
        "mode must be 'panoptic' or 'instance', got 'semantic'",
    )


def test_samples_are_uint8_images_resized_within_the_frame(coco_sample: Path) -> None:
    datamodule = make(coco_sample, entry(image_size=64))
    datamodule.setup("predict")
    sample = datamodule.predict_datasets()[0][1]
    assert sample["image"].dtype == torch.uint8 and tuple(sample["image"].shape) == (3, 36, 64)
    assert sample["frame"] == (64, 64) and sample["orig_size"] == (360, 640)


def test_photos_are_read_upright_and_annotated_images_as_stored(tmp_path: Path) -> None:
    stored = np.zeros((4, 6, 3), dtype=np.uint8)
    stored[0, :, 0] = 255  # a red top row
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation: shown rotated 90 degrees clockwise
    Image.fromarray(stored).save(tmp_path / "photo.png", exif=exif)
    upright = read_upright_image(tmp_path / "photo.png")
    assert upright.shape == (3, 6, 4)
    assert (upright[0, :, -1] == 255).all()  # the top row is shown as the right column
    assert read_rgb(tmp_path / "photo.png").shape == (4, 6, 3)
