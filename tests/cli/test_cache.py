"""``findlit cache`` end to end on generated data with the tiny test encoder."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from findlit.cli import main
from findlit.cli.cache import cache_device, chosen_datasets, rank_from_environment
from findlit.cli.config import build_datamodule, load_data_section
from findlit.data.synthetic import generate
from findlit.errors import ConfigError
from tests.encoders import tiny  # noqa: F401 - registers the "tiny_test_vision" encoder


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cache_cli") / "data"
    generate(root, train=7, val=3, size=64, seed=0)
    return root


def experiment(root: Path, cache: Path, image_size: int = 64, model: Any = "default") -> dict[str, Any]:
    transforms = {"image_size": image_size, "lsj": False}
    panoptic = {"panoptic_json": "annotations/panoptic_train.json", "panoptic_root": "panoptic_train"}
    config: dict[str, Any] = {
        "data": {
            "root": str(root),
            "num_workers": 0,
            "train": [
                {
                    "name": "pan",
                    "task": "segmentation",
                    "format": "coco_panoptic",
                    "paths": {**panoptic, "image_root": "train"},
                    "transforms": transforms,
                    "features": str(cache / "train_panoptic"),
                },
                {
                    "name": "cap",
                    "task": "retrieval",
                    "format": "coco_captions",
                    "paths": {"captions_json": "annotations/captions_train.json", "image_root": "train"},
                    "transforms": transforms,
                },
            ],
            "val": [
                {
                    "name": "cap",
                    "task": "retrieval",
                    "format": "coco_captions",
                    "paths": {"captions_json": "annotations/captions_val.json", "image_root": "val"},
                    "transforms": transforms,
                    "features": "cache/val_captions",  # relative to data.root
                }
            ],
        }
    }
    if model == "default":
        config["model"] = {"vision_encoder": {"name": "tiny_test_vision", "options": {"seed": 0}}}
    elif model is not None:
        config["model"] = model
    return config


def write(path: Path, content: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump(content))
    return str(path)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["cache", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(autouse=True)
def single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"):
        monkeypatch.delenv(name, raising=False)


def test_cache_then_rerun_reuses_every_shard(
    tmp_path: Path, synth: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path / "exp.yaml", experiment(synth, tmp_path / "cache"))
    code, out, err = run(
        capsys, "--config", config, "--split", "train", "--shard-size", "3", "--batch-size", "2"
    )
    assert code == 0, err
    assert "data.train[0] pan: 7 images" in out
    assert re.search(
        r"pan: 3 shards; computed 3 \(7 images, [0-9.]+ MB\), reused 0, .*cache complete", out
    ), out
    assert "cap" not in out.replace("captions", ""), "datasets without features: are not cached"
    code, out, err = run(capsys, "--config", config, "--split", "train")
    assert code == 0, err
    assert "computed 0 (0 images, 0.0 MB), reused 3" in out, out
    # The DataModule now reads the training features from the cache (val is not cached yet).
    datamodule = build_datamodule(load_data_section([config]))
    assert "features" in datamodule.stage_datasets("train")[0][(0, 0)]
    assert "image" in datamodule.stage_datasets("train")[1][(0, 0)]


def test_val_split_and_relative_folder(
    tmp_path: Path, synth: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "data"
    generate(root, train=2, val=3, size=64, seed=1)
    config = write(tmp_path / "exp.yaml", experiment(root, tmp_path / "cache"))
    code, out, err = run(capsys, "--config", config, "--split", "val", "--dtype", "float32")
    assert code == 0, err
    assert (root / "cache" / "val_captions" / "manifest.json").is_file()
    assert "cap: 1 shards; computed 1 (3 images" in out


def test_init_args_form_of_the_model_section(
    tmp_path: Path, synth: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = {
        "class_path": "findlit.FINDModule",
        "init_args": {"vision_encoder": {"name": "tiny_test_vision"}},
    }
    config = write(tmp_path / "exp.yaml", experiment(synth, tmp_path / "cache", model=model))
    code, _, err = run(capsys, "--config", config, "--split", "train")
    assert code == 0, err


def test_missing_vision_encoder_is_a_config_error(
    tmp_path: Path, synth: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path / "exp.yaml", experiment(synth, tmp_path / "cache", model=None))
    code, _, err = run(capsys, "--config", config, "--split", "train")
    assert code == 2
    assert "config error" in err and "model.vision_encoder is required" in err


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"vision_encoder": "timm"}, "model.vision_encoder must be a mapping"),
        ({"vision_encoder": {"name": "tiny_test_vision", "opts": {}}}, "model.vision_encoder.opts"),
        (
            {"vision_encoder": {"name": "tiny_test_vision", "options": {"bogus": 1}}},
            "model.vision_encoder.bogus",
        ),
        ({"vision_encoder": {"name": "no_such_encoder"}}, "unknown encoder 'no_such_encoder'"),
    ],
)
def test_bad_vision_encoder_sections(
    tmp_path: Path, synth: Path, capsys: pytest.CaptureFixture[str], section: dict[str, Any], message: str
) -> None:
    config = write(tmp_path / "exp.yaml", experiment(synth, tmp_path / "cache", model=section))
    code, _, err = run(capsys, "--config", config, "--split", "train")
    assert code == 2 and message in err, err


def test_split_without_cached_datasets(
    tmp_path: Path, synth: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path / "exp.yaml", experiment(synth, tmp_path / "cache"))
    code, _, err = run(capsys, "--config", config, "--split", "test")
    assert code == 2 and "no dataset of data.test sets `features:`" in err
    code, _, err = run(capsys, "--config", config, "--split", "train", "--dataset", "nope")
    assert code == 2 and "no dataset named ['nope']" in err


def test_changed_preprocessing_is_a_stale_cache_error(
    tmp_path: Path, synth: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = write(tmp_path / "a.yaml", experiment(synth, tmp_path / "cache", image_size=64))
    assert run(capsys, "--config", first, "--split", "train")[0] == 0
    # A second file overrides the resize, as a user tweaking an experiment would.
    override = {"data": experiment(synth, tmp_path / "cache", image_size=48)["data"]}
    second = write(tmp_path / "b.yaml", override)
    code, _, err = run(capsys, "--config", first, "--config", second, "--split", "train")
    assert code == 2
    assert "cache error: stale feature cache" in err and "preprocessing.image_size: 64 != 48" in err
    assert "data.train[0].features" in err


def test_ranks_from_the_environment_fill_disjoint_shards(
    tmp_path: Path, synth: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write(tmp_path / "exp.yaml", experiment(synth, tmp_path / "cache"))
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_PROCID", "1")
    code, out, _ = run(capsys, "--config", config, "--split", "train", "--shard-size", "2")
    assert code == 0
    assert "[rank 1/2]" in out and "computed 2 (3 images" in out and "2 shards left to other ranks" in out
    monkeypatch.setenv("SLURM_PROCID", "0")
    code, out, _ = run(capsys, "--config", config, "--split", "train")
    assert code == 0 and "computed 2 (4 images" in out and "cache complete" in out


def test_rank_from_environment() -> None:
    assert rank_from_environment({}) == (0, 1, 0)
    assert rank_from_environment({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == (3, 4, 1)
    assert rank_from_environment({"SLURM_PROCID": "2", "SLURM_NTASKS": "3", "SLURM_LOCALID": "0"}) == (
        2,
        3,
        0,
    )
    with pytest.raises(ConfigError, match="RANK=4"):
        rank_from_environment({"RANK": "4", "WORLD_SIZE": "4"})


def test_usage_mentions_cache(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "findlit cache --config" in capsys.readouterr().err


def corrupt_val_image(tmp_path: Path) -> Path:
    """A copy of a generated dataset whose first validation image is not an image."""
    root = tmp_path / "data"
    generate(root, train=2, val=3, size=64, seed=2)
    bad = sorted((root / "val").glob("*.jpg"))[0]
    bad.write_bytes(b"not a jpeg")
    return root


def test_a_bad_image_is_a_data_error_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = corrupt_val_image(tmp_path)
    config = write(tmp_path / "exp.yaml", experiment(root, tmp_path / "cache"))
    code, _, err = run(capsys, "--config", config, "--split", "val")
    assert code == 2, err
    [line] = err.strip().splitlines()
    assert line.startswith("findlit: data error: ") and "data.val[0]" in line


def test_skipped_bad_images_are_reported_with_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = corrupt_val_image(tmp_path)
    content = experiment(root, tmp_path / "cache")
    content["data"]["on_bad_record"] = "skip"
    config = write(tmp_path / "exp.yaml", content)
    code, out, err = run(capsys, "--config", config, "--split", "val")
    assert code == 1, err
    assert "cap: skipped 0 bad record(s) and 1 bad image(s)" in out and "findlit data check" in out


def test_chosen_datasets_and_device() -> None:
    configs = build_datamodule(experiment(Path("/nowhere"), Path("/cache"))["data"]).configs["train"]
    assert [(index, dataset.name) for index, dataset in chosen_datasets(configs, "train", None)] == [
        (0, "pan")
    ]
    with pytest.raises(ConfigError, match=r"no dataset of data.train sets `features:`"):
        chosen_datasets(configs, "train", ["cap"])
    with pytest.raises(ConfigError, match=r"no dataset named \['nope'\]"):
        chosen_datasets(configs, "train", ["nope"])
    assert cache_device("cuda", 4, 2) == "cuda:2"
    assert cache_device("cuda", 1, 0) == "cuda" and cache_device("cpu", 4, 2) == "cpu"
