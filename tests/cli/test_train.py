"""``findlit fit|validate|test|predict``: the LightningCLI over FINDModule and MultiTaskDataModule."""

from __future__ import annotations

import csv
import functools
import json
import os
import re
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.loggers import WandbLogger
from PIL import Image
from pycocotools import mask as mask_utils

import findlit
from findlit.cli import main
from findlit.cli.train import FindLightningCLI, wants_default_progress_bar
from findlit.data.datamodule import MultiTaskDataModule
from findlit.data.synthetic import generate
from findlit.encoders.registry import EncoderConfig
from tests.fixtures import COCO_SAMPLE, REPO, other_encoder_checkpoint
from tests.training.test_module import INTERFACE, TASK_OPTIONS, data_section

CONFIGS = REPO / "configs"
DEMO = CONFIGS / "demo.yaml"
FAST = CONFIGS / "debug" / "fast.yaml"
WANDB = CONFIGS / "logger" / "wandb.yaml"
PREDICT = CONFIGS / "predict" / "coco_sample.yaml"

CONFIG_RUNS = {
    "demo": [DEMO],
    "demo+fast": [DEMO, FAST],
    "coco_sample": [CONFIGS / "coco_sample.yaml"],
    "find_coco_clip": [CONFIGS / "find_coco_clip.yaml"],
    "find_coco_sam": [CONFIGS / "find_coco_sam.yaml"],
    "find_coco_clip+fast": [CONFIGS / "find_coco_clip.yaml", FAST],
    "demo+ddp": [DEMO, CONFIGS / "trainer" / "ddp.yaml"],
    "demo+slurm": [DEMO, CONFIGS / "trainer" / "slurm.yaml"],
    "demo+wandb": [DEMO, WANDB],
    "demo+predict": [DEMO, PREDICT],
    "demo+retrieval_alone": [DEMO, CONFIGS / "experiments" / "retrieval_alone.yaml"],
    "demo+retrieval_with_segmentation": [DEMO, CONFIGS / "experiments" / "retrieval_with_segmentation.yaml"],
    "find_coco_sam+slurm+wandb": [CONFIGS / "find_coco_sam.yaml", CONFIGS / "trainer" / "slurm.yaml", WANDB],
}
"""Every experiment YAML under configs/ (configs/prototypes/ holds attention prototypes, not
experiments), and every partial merged after the experiment it refines."""


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_every_config_file_is_covered() -> None:
    experiments = {
        path
        for path in (REPO / "configs").rglob("*.yaml")
        if "prototypes" not in path.relative_to(REPO / "configs").parts
    }
    covered = {path for paths in CONFIG_RUNS.values() for path in paths}
    assert experiments == covered


@pytest.mark.parametrize("name", list(CONFIG_RUNS))
def test_config_parses_with_print_config(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    def no_build(*_: Any, **__: Any) -> None:
        raise AssertionError("parsing a config built an encoder")

    # the COCO configs name hub weights and checkpoint files that tests never have
    monkeypatch.setattr(EncoderConfig, "build", no_build)
    arguments = [argument for path in CONFIG_RUNS[name] for argument in ("--config", str(path))]
    code, out, err = run(capsys, "fit", *arguments, "--print_config")
    assert code == 0, err
    printed = yaml.safe_load(out)
    assert printed["trainer"]["use_distributed_sampler"] is False
    if name.startswith("demo"):
        assert printed["model"]["interface"]["num_proposals"] == 30
        assert printed["trainer"]["accelerator"] == "cpu"
    if name == "demo+fast":
        assert printed["trainer"]["max_steps"] == 2
        assert printed["trainer"]["limit_val_batches"] == 1
        assert printed["data"]["num_workers"] == 0
        # the partial changes only what it names
        assert printed["data"]["train"][0]["name"] == "demo_panoptic"
        assert printed["trainer"]["gradient_clip_val"] == 5.0
    if name.startswith("demo+retrieval"):
        # the experiments replace the demo's tasks and datasets, and monitor nothing
        retrieval = [d for d in printed["data"]["train"] if d["task"] == "retrieval"]
        assert [d["batch_size"] for d in retrieval] == [48]
        assert printed["data"]["val"] == []
        assert printed["trainer"]["callbacks"][0]["init_args"]["monitor"] is None
        assert "interleave" not in printed["model"]["tasks"]
    if name.startswith("find_coco"):
        model, data = printed["model"], printed["data"]
        # FIND's interface and optimiser
        assert model["interface"] == {
            "hidden_dim": 512,
            "num_layers": 9,
            "num_heads": 8,
            "ffn_dim": 2048,
            "num_proposals": 100,
            "embed_dim": 512,
            # every option is printed, with its default: FIND's prototype, no pooling
            "prototype": None,
            "mask_pooling": False,
            "image_pooling": False,
            # the visual-prompt pathway is off unless a task needs it
            "visual_prompts": False,
            "max_visual_points": 512,
        }
        assert model["lr"] == 1e-4 and model["weight_decay"] == 0.05
        assert printed["trainer"]["gradient_clip_val"] == 0.01
        assert data["root"] == "datasets/coco"
        train = {dataset["name"]: dataset for dataset in data["train"]}
        assert {dataset["task"] for dataset in train.values()} == {
            "segmentation",
            "retrieval",
            "grounding",
            "interleave",
        }
        assert all(dataset["batch_size"] == 6 for dataset in train.values())
        panoptic = train["coco_panoptic"]["transforms"]
        assert panoptic["image_size"] == 1024 and panoptic["lsj"] is True and panoptic["min_scale"] == 0.1
        assert train["refcocog_umd"]["transforms"]["lsj"] is False
        assert train["refcocog_umd"]["paths"]["refs"] == "refcocog/refs(umd).p"
        val = {dataset["name"]: dataset for dataset in data["val"]}
        assert val["karpathy"]["format"] == "karpathy" and val["karpathy"]["paths"]["split"] == "val"
        assert {dataset["paths"]["split"] for dataset in data["test"] if dataset["name"] == "karpathy"} == {
            "test"
        }
    if name.startswith("find_coco_clip"):
        assert printed["model"]["vision_encoder"]["name"] == "open_clip_vision"
        assert printed["model"]["text_encoder"]["options"]["model"] == "ViT-B-16"
    if name.startswith("find_coco_sam"):
        assert printed["model"]["vision_encoder"]["options"]["variant"] == "vit_b"
        assert printed["model"]["text_encoder"]["name"] == "hf_text"
    if name == "find_coco_clip+fast":
        assert printed["trainer"]["max_steps"] == 2 and printed["data"]["steps_per_epoch"] == 2
        assert printed["trainer"]["max_epochs"] == 50  # the partial changes only what it names
    if name == "demo+ddp":
        assert printed["trainer"]["strategy"]["class_path"] == "lightning.pytorch.strategies.DDPStrategy"
        assert printed["trainer"]["accelerator"] == "cpu"  # the experiment keeps its accelerator
    if name.endswith("slurm") or "+slurm" in name:
        [plugin] = printed["trainer"]["plugins"]
        assert plugin["class_path"] == "lightning.pytorch.plugins.environments.SLURMEnvironment"
        assert plugin["init_args"] == {"auto_requeue": False, "requeue_signal": "SIGUSR1"}
        assert printed["trainer"]["strategy"]["class_path"] == "lightning.pytorch.strategies.DDPStrategy"
    if name == "demo+predict":
        [entry] = printed["data"]["predict"]
        assert entry["name"] == "coco_sample" and entry["images"] == ["val2017"]
        assert entry["root"] == "tests/data/coco_sample" and entry["prompts"]
        assert printed["data"]["root"] == "data/demo"  # the partial leaves the experiment's root alone
        assert printed["prediction_writer"] == {"enabled": True, "directory": None, "overwrite": False}
    if name.endswith("wandb"):
        logger = printed["trainer"]["logger"]
        assert logger["class_path"] == "lightning.pytorch.loggers.WandbLogger"
        assert logger["init_args"]["offline"] is True


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"findlit {findlit.__version__}"
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for subcommand in ("fit", "validate", "test", "predict", "data", "cache"):
        assert subcommand in out
    code, _, err = run(capsys)
    assert code == 2
    assert all(subcommand in err for subcommand in ("fit", "validate", "test", "predict"))


def test_unknown_config_key_is_an_error_naming_it(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = yaml.safe_load(DEMO.read_text())
    config["model"]["interface_typo"] = {"hidden_dim": 8}
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(config))
    code, _, err = run(capsys, "fit", "--config", str(path), "--print_config")
    assert code != 0
    assert "interface_typo" in err


def tiny_config(tmp_path: Path, train_images: int = 8) -> Path:
    """demo.yaml over a tiny generated dataset, with a tiny interface and test encoder."""
    generate(tmp_path / "data", train=train_images, val=4, size=64, seed=0)
    config: dict[str, Any] = yaml.safe_load(DEMO.read_text())
    # the demo's own choices that tests set themselves: its checkpoint policy and test after fit
    config.pop("test_after_fit", None)
    config["trainer"].pop("callbacks", None)
    data = data_section(tmp_path / "data")
    data["test"] = data["val"]
    data["steps_per_epoch"] = 2  # validation runs at the end of the epoch, within --trainer.max_steps 2
    config["data"] = data
    config["model"].update(
        vision_encoder={"name": "timm", "options": {"model": "test_resnet", "weights": None}},
        interface=INTERFACE,
        task_options=TASK_OPTIONS,
        warmup_steps=1,
    )
    # these tests' validate/test/predict runs are about data, outputs and errors, mostly without a
    # checkpoint; the refusal of untrained evaluation has its own test (it turns this back off)
    config["allow_untrained"] = True
    logs = str(tmp_path / "logs")
    config["trainer"].update(
        default_root_dir=logs,
        logger={"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": logs}},
        val_check_interval=None,
        check_val_every_n_epoch=1,
        limit_val_batches=1,
        limit_test_batches=1,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_fit_then_test_from_the_checkpoint(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tiny_config(tmp_path)
    code, _, err = run(capsys, "fit", "--config", str(config), "--trainer.max_steps", "2")
    assert code == 0, err
    run_dir = tmp_path / "logs" / "lightning_logs" / "version_0"
    checkpoints = list((run_dir / "checkpoints").glob("*.ckpt"))
    assert len(checkpoints) == 1
    with open(run_dir / "metrics.csv") as file:
        columns = set(next(csv.reader(file)))
    assert "train/loss" in columns and "val/demo_panoptic/mIoU" in columns
    # the resolved config is saved next to the metrics
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["trainer"]["max_steps"] == 2

    code, out, err = run(capsys, "test", "--config", str(config), "--ckpt_path", str(checkpoints[0]))
    assert code == 0, err
    assert "test/demo_panoptic/mIoU" in out
    assert (tmp_path / "logs" / "lightning_logs" / "version_1" / "metrics.csv").is_file()


@pytest.mark.slow
def test_two_epoch_fit_then_tests_its_best_checkpoint(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``test_after_fit: best`` tests the checkpoint ModelCheckpoint chose, in the same run folder."""
    config = tiny_config(tmp_path)
    tested: list[str] = []
    original_test = Trainer.test

    def recording_test(trainer: Trainer, *args: Any, **kwargs: Any) -> Any:
        tested.append(str(kwargs.get("ckpt_path")))
        tested.append(trainer.checkpoint_callback.best_model_path)  # type: ignore[union-attr]
        return original_test(trainer, *args, **kwargs)

    monkeypatch.setattr(Trainer, "test", recording_test)
    code, _, err = run(
        capsys,
        "fit",
        "--config",
        str(config),
        "--trainer.max_steps",
        "-1",
        "--trainer.max_epochs",
        "2",
        "--test_after_fit",
        "best",
    )
    assert code == 0, err
    run_dir = tmp_path / "logs" / "lightning_logs" / "version_0"
    with open(run_dir / "metrics.csv") as file:
        epochs = {row["epoch"] for row in csv.DictReader(file) if row.get("train/loss")}
    assert epochs == {"0", "1"}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "test/demo_panoptic/PQ" in metrics and "test/demo_refs/cIoU" in metrics
    assert tested[0] == "best" and Path(tested[1]).parent == run_dir / "checkpoints"
    assert not (tmp_path / "logs" / "lightning_logs" / "version_1").exists()


@pytest.mark.slow
def test_fast_dev_run_fit_then_test(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """``fast_dev_run`` runs one batch of every stage; test then runs on the same config."""
    config = tiny_config(tmp_path)
    code, _, err = run(capsys, "fit", "--config", str(config), "--trainer.fast_dev_run", "true")
    assert code == 0, err
    code, out, err = run(
        capsys,
        "test",
        "--config",
        str(config),
        "--trainer.fast_dev_run",
        "true",
        "--test_results.enabled",
        "false",
        # fast_dev_run writes no checkpoint: this smoke test of the test loop runs untrained weights
        "--allow_untrained",
        "true",
    )
    assert code == 0, err
    assert "test/demo_panoptic/mIoU" in out


PHOTOS = sorted((COCO_SAMPLE / "val2017").glob("*.jpg"))
PREDICT_PROMPTS = ["the rugby ball in the air", "the red truck on the left"]
PREDICT_CLASSES = {"classes": ["person", "horse", "truck"], "stuff": ["grass", "sky"]}


def predict_partial(folder: Path, name: str, **fields: Any) -> Path:
    """A ``data.predict`` partial on the two real COCO photos (resized as the tiny config's test data)."""
    entry = {
        "name": "coco_sample",
        "root": str(COCO_SAMPLE),
        "images": ["val2017"],
        "prompts": PREDICT_PROMPTS,
        **PREDICT_CLASSES,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"data": {"predict": [entry | fields]}}))
    return path


def predict_run(config: Path, checkpoint: Path, partial: Path, version: str, *extra: str) -> int:
    """``findlit predict --config tiny --config partial --ckpt_path ...`` into the run folder ``version``."""
    return main(
        [
            "predict",
            *("--config", str(config), "--config", str(partial)),
            *("--ckpt_path", str(checkpoint)),
            *("--trainer.logger.init_args.version", version),
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(tiny config, checkpoint) of a one-step ``findlit fit``."""
    folder = tmp_path_factory.mktemp("fitted")
    config = tiny_config(folder)
    code = main(
        ["fit", "--config", str(config), "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0"]
    )
    assert code == 0
    [checkpoint] = (folder / "logs" / "lightning_logs" / "version_0" / "checkpoints").glob("*.ckpt")
    return config, checkpoint


@pytest.fixture(scope="module")
def predicted(fitted: tuple[Path, Path]) -> Path:
    """The run folder of ``findlit predict --config`` on the COCO photos, one image per batch."""
    config, checkpoint = fitted
    returned: list[Any] = []
    original_predict = Trainer.predict

    @functools.wraps(original_predict)  # LightningCLI reads the subcommand's arguments from it
    def recording_predict(trainer: Trainer, *args: Any, **kwargs: Any) -> Any:
        returned.append(kwargs.get("return_predictions"))
        return original_predict(trainer, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "predict", recording_predict)
        partial = predict_partial(config.parent, "batch1", batch_size=1)
        assert predict_run(config, checkpoint, partial, "batch1") == 0
    # the writer saves each batch; the CLI does not hold every image's masks until the end
    assert returned == [False]
    return config.parent / "logs" / "lightning_logs" / "batch1"


def decoded_masks(folder: Path, photo: Path) -> tuple[list[str], list[str], list[float], torch.Tensor]:
    """(labels, sources, scores, masks bool[N,H,W]) of a photo's JSON; masks decode to the photo's size."""
    with Image.open(photo) as image:
        width, height = image.size
    with Image.open(folder / f"{photo.stem}.png") as overlay:
        assert overlay.size == (width, height)
    document = json.loads((folder / f"{photo.stem}.json").read_text())
    assert document["image"] == str(photo) and (document["height"], document["width"]) == (height, width)
    masks = []
    for entry in document["masks"]:
        rle = dict(entry["segmentation"], counts=entry["segmentation"]["counts"].encode("ascii"))
        mask = mask_utils.decode(rle)
        assert mask.shape == (height, width) and entry["area"] == int(mask.sum())
        masks.append(torch.from_numpy(mask).bool())
    entries = document["masks"]
    return (
        [e["label"] for e in entries],
        [e["source"] for e in entries],
        [e["score"] for e in entries],
        torch.stack(masks) if masks else torch.zeros(0, height, width, dtype=torch.bool),
    )


@pytest.mark.slow
def test_predict_writes_overlays_and_rle_json_of_the_real_photos(predicted: Path) -> None:
    folder = predicted / "predictions" / "coco_sample"
    assert sorted(path.name for path in folder.iterdir()) == sorted(
        f"{photo.stem}{suffix}" for photo in PHOTOS for suffix in (".json", ".png")
    )
    for photo in PHOTOS:
        labels, sources, _, _ = decoded_masks(folder, photo)
        assert [label for label, s in zip(labels, sources, strict=True) if s == "prompt"] == PREDICT_PROMPTS
        classes = {label for label, s in zip(labels, sources, strict=True) if s == "class"}
        assert classes <= {*PREDICT_CLASSES["classes"], *PREDICT_CLASSES["stuff"]}
    # the run's resolved config sits next to its predictions
    saved = yaml.safe_load((predicted / "config.yaml").read_text())
    assert saved["data"]["predict"][0]["prompts"] == PREDICT_PROMPTS


@pytest.mark.slow
def test_predict_with_batch_size_2_gives_the_masks_of_batch_size_1(
    fitted: tuple[Path, Path], predicted: Path
) -> None:
    config, checkpoint = fitted
    partial = predict_partial(config.parent, "batch2", batch_size=2)
    assert predict_run(config, checkpoint, partial, "batch2") == 0
    alone = predicted / "predictions" / "coco_sample"
    together = config.parent / "logs" / "lightning_logs" / "batch2" / "predictions" / "coco_sample"
    for photo in PHOTOS:
        labels, sources, scores, masks = decoded_masks(alone, photo)
        labels2, sources2, scores2, masks2 = decoded_masks(together, photo)
        assert (labels2, sources2) == (labels, sources)
        assert scores2 == pytest.approx(scores, abs=1e-4)
        # both pad every photo to the same square frame: only float rounding of batched kernels
        # could move a pixel on a decision boundary
        assert (masks2 != masks).float().mean() < 1e-3


@pytest.mark.slow
def test_predict_refuses_to_overwrite_earlier_predictions(
    fitted: tuple[Path, Path], predicted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, checkpoint = fitted
    partial = predict_partial(config.parent, "again", batch_size=2)
    document = predicted / "predictions" / "coco_sample" / f"{PHOTOS[0].stem}.json"
    before = document.read_bytes()
    directory = ("--prediction_writer.directory", str(predicted))
    assert predict_run(config, checkpoint, partial, "again", *directory) == 2
    err = capsys.readouterr().err
    assert "findlit: output error: " in err and "Traceback" not in err
    assert re.search(rf"{PHOTOS[0].stem}\.(png|json).*prediction_writer\.overwrite", err)
    assert document.read_bytes() == before


def file_contents(folder: Path) -> dict[Path, bytes]:
    """Every file under ``folder`` with its bytes, to show that a failed run left them alone."""
    return {path: path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.slow
def test_predict_with_a_checkpoint_of_other_encoders_is_refused(
    fitted: tuple[Path, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config, checkpoint = fitted
    other = other_encoder_checkpoint(checkpoint, tmp_path)
    partial = predict_partial(tmp_path, "other")
    out = ("--prediction_writer.directory", str(tmp_path / "out"))
    assert predict_run(config, other, partial, "other", *out) == 2
    err = capsys.readouterr().err
    assert "findlit: checkpoint error: the checkpoint's encoders differ" in err
    assert "encoder 'vision_encoder' weights_digest" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_test_with_a_checkpoint_of_other_encoders_ends_with_exit_2_and_leaves_files_alone(
    fitted: tuple[Path, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config, checkpoint = fitted
    other = other_encoder_checkpoint(checkpoint, tmp_path)
    earlier_run = file_contents(checkpoint.parents[1])
    earlier_other = other.read_bytes()
    code, _, err = run(
        capsys,
        "test",
        *("--config", str(config), "--ckpt_path", str(other)),
        *("--trainer.logger.init_args.save_dir", str(tmp_path / "logs")),
    )
    assert code == 2, err
    assert "findlit: checkpoint error: " in err and "weights_digest" in err and "Traceback" not in err
    # the checkpoint given, and the run that wrote the original, are as they were
    assert other.read_bytes() == earlier_other
    assert file_contents(checkpoint.parents[1]) == earlier_run
    # nothing was tested, so no results were written
    assert not list((tmp_path / "logs").rglob("metrics.json"))
    assert not list((tmp_path / "logs").rglob("*.ckpt"))


# ---------------------------------------------------------------------------------------------------
# errors found after parsing: exit code 2 and one line naming the key or file, never a traceback


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_evaluating_without_a_checkpoint_is_refused_unless_asked_for(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, subcommand: str
) -> None:
    """A forgotten --ckpt_path is not a silent evaluation of random weights: one line, exit 2."""
    configs = ["--config", str(tiny_config(tmp_path))]
    if subcommand == "predict":
        configs += ["--config", str(predict_partial(tmp_path, "request"))]
    err = failed_run(capsys, subcommand, *configs, "--allow_untrained", "false")
    assert err == (
        f"findlit: config error: --ckpt_path: findlit {subcommand} without a checkpoint would run the "
        "untrained interface; give --ckpt_path CKPT, or --allow_untrained true to do that on purpose\n"
    )
    assert not (tmp_path / "logs").exists()  # refused before anything was built or written


def failed_run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """stderr of a ``findlit`` command that has to end with exit code 2 and no traceback."""
    code, _, err = run(capsys, *argv)
    assert code == 2, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize(("subcommand", "split"), [("fit", "val"), ("validate", "val"), ("test", "test")])
def test_missing_dataset_file_ends_the_run_with_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, subcommand: str, split: str
) -> None:
    config = tiny_config(tmp_path)
    missing = tmp_path / "data" / "annotations" / "panoptic_val.json"
    missing.unlink()  # data.val[0] and data.test[0] read it
    earlier = tmp_path / "logs" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"an earlier run's checkpoint")
    err = failed_run(capsys, subcommand, "--config", str(config), "--trainer.max_steps", "1")
    key = f"data.{split}[0].paths.panoptic_json"
    assert f"findlit: data error: file not found [file {missing}; set by config key '{key}']" in err
    assert earlier.read_bytes() == b"an earlier run's checkpoint"
    assert list((tmp_path / "logs").rglob("*.ckpt")) == [earlier]


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test", "predict"])
def test_missing_checkpoint_ends_the_run_with_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, subcommand: str
) -> None:
    configs = ["--config", str(tiny_config(tmp_path))]
    if subcommand == "predict":
        configs += ["--config", str(predict_partial(tmp_path, "request"))]
    missing = tmp_path / "nowhere.ckpt"
    err = failed_run(capsys, subcommand, *configs, "--ckpt_path", str(missing))
    assert f"findlit: checkpoint error: --ckpt_path: no such file: {missing}" in err
    assert not (tmp_path / "logs").exists()  # found before anything was built


class RunsCode:
    """Unpickling this calls ``os.system``: what a hostile checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def unusable_checkpoint(folder: Path, kind: str, good: Path) -> tuple[Path, str]:
    """A checkpoint file of ``kind`` in ``folder`` and what the error line must say about it."""
    path = folder / f"{kind}.ckpt"
    if kind == "text":
        path.write_text("epoch: 3\n")
        return path, "not a torch.save file (it is a text file)"
    if kind == "json":
        path.write_text(json.dumps({"state_dict": {}}))
        return path, "not a torch.save file (it looks like JSON)"
    if kind == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path, "truncated or damaged"
    if kind == "state_dict":
        torch.save({"weight": torch.zeros(2)}, path)
        return path, "not a Lightning checkpoint: no 'state_dict' entry"
    assert kind == "code"
    torch.save({"state_dict": {}, "payload": RunsCode(folder / "code-ran")}, path)
    return path, "refused: it holds pickled Python objects other than tensors and plain data"


CHECKPOINT_KINDS = ["text", "json", "truncated", "state_dict", "code"]


@pytest.mark.parametrize("kind", CHECKPOINT_KINDS)
@pytest.mark.parametrize("subcommand", ["fit", "test", "predict"])
def test_unusable_checkpoint_is_one_line_naming_the_file(
    fitted: tuple[Path, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path, subcommand: str, kind: str
) -> None:
    """Not a checkpoint, truncated, no Lightning checkpoint, holding code: exit 2, one line, no code run."""
    _, good = fitted
    path, said = unusable_checkpoint(tmp_path, kind, good)
    before = path.read_bytes()
    configs = ["--config", str(tiny_config(tmp_path))]
    if subcommand == "predict":
        configs += ["--config", str(predict_partial(tmp_path, "request"))]
    err = failed_run(capsys, subcommand, *configs, "--ckpt_path", str(path))
    assert err.startswith(f"findlit: checkpoint error: --ckpt_path {path}: {said}"), err
    assert err.count("\n") == 1 and "weights_only=False" not in err
    assert not (tmp_path / "code-ran").exists()
    assert path.read_bytes() == before
    assert not (tmp_path / "logs").exists()  # found before anything was built


@pytest.mark.parametrize("kind", CHECKPOINT_KINDS)
def test_unusable_checkpoint_of_predict_on_images(
    fitted: tuple[Path, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path, kind: str
) -> None:
    _, good = fitted
    path, said = unusable_checkpoint(tmp_path, kind, good)
    image = COCO_SAMPLE / "val2017" / "000000142238.jpg"
    out = tmp_path / "out"
    argv = ["--ckpt_path", str(path), "--images", str(image), "--prompts", "a cat", "--out", str(out)]
    err = failed_run(capsys, "predict", *argv)
    assert err.startswith(f"findlit: checkpoint error: checkpoint {path}: {said}"), err
    assert err.count("\n") == 1 and "weights_only=False" not in err
    assert not (tmp_path / "code-ran").exists()
    assert not out.exists()


def test_missing_checkpoint_of_predict_on_images(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.ckpt"
    image = COCO_SAMPLE / "val2017" / "000000142238.jpg"
    out = tmp_path / "out"
    argv = ["--ckpt_path", str(missing), "--images", str(image), "--prompts", "a cat", "--out", str(out)]
    err = failed_run(capsys, "predict", *argv)
    assert err == f"findlit: checkpoint error: --ckpt_path: no such file: {missing}\n"
    assert not out.exists()


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test", "predict"])
def test_earlier_run_folder_is_refused_before_anything_is_written(
    fitted: tuple[Path, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path, subcommand: str
) -> None:
    """A run folder with an earlier run in it: an output error, and the folder byte for byte as it was.

    The earlier run has what a findlit run leaves: its config.yaml, hparams.yaml, the CSV logger's
    metrics.csv (which a new CSVLogger would replace), a checkpoint, test results and predictions.
    """
    config = tiny_config(tmp_path)
    _, checkpoint = fitted
    run_dir = tmp_path / "logs" / "lightning_logs" / "version_0"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("an earlier run's config\n")
    (run_dir / "hparams.yaml").write_text("lr: 0.0001\n")
    (run_dir / "metrics.csv").write_text("step,loss\n0,1.0\n")
    (run_dir / "metrics.json").write_text('{"test/demo_panoptic/PQ": 0.5}\n')
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(checkpoint.read_bytes())
    (run_dir / "predictions" / "coco_sample").mkdir(parents=True)
    (run_dir / "predictions" / "coco_sample" / "000000142238.json").write_text("{}\n")
    before = tree(tmp_path / "logs")
    argv = ["--config", str(config)]
    if subcommand == "predict":
        argv += ["--config", str(predict_partial(tmp_path, "request"))]
    if subcommand != "fit":
        argv += ["--ckpt_path", str(checkpoint)]
    err = failed_run(capsys, subcommand, *argv, "--trainer.logger.init_args.version", "0")
    [line] = [line for line in err.splitlines() if line.startswith("findlit:")]
    assert line.startswith(f"findlit: output error: {run_dir / 'config.yaml'} exists"), err
    assert tree(tmp_path / "logs") == before


def test_data_error_in_a_dataloader_worker_reaches_the_user(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A record that fails to decode in a worker process: the DataError itself, one line, exit 2."""
    config = tiny_config(tmp_path)
    for image in (tmp_path / "data" / "val").glob("*.jpg"):
        image.write_bytes(b"not a jpeg")
    err = failed_run(capsys, "validate", "--config", str(config), "--data.num_workers", "1")
    [line] = [line for line in err.splitlines() if line.startswith("findlit:")]
    assert line.startswith("findlit: data error: "), err
    assert "DataLoader worker" not in line and str(tmp_path / "data" / "val") in line
    assert "data.val[0]" in line


def test_wrong_model_tasks_end_the_run_with_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tiny_config(tmp_path)
    err = failed_run(capsys, "validate", "--config", str(config), "--model.tasks", "[segmentation, depth]")
    assert "findlit: config error: model.tasks: unknown task(s) ['depth']" in err


SEGMENTATION_ONLY = {
    "tasks": ["segmentation"],
    "task_options": {"segmentation": TASK_OPTIONS["segmentation"]},
}
"""A ``model`` section without the grounding task, so it cannot serve free-text prompts."""


@pytest.mark.parametrize(
    ("fields", "model", "expected"),
    [
        (
            {"prompts": [], "classes": [], "stuff": []},
            None,
            "findlit: config error: data.predict[0].prompts: nothing to predict",
        ),
        (
            {"images": ["val2017", "nowhere.jpg"]},
            None,
            "findlit: config error: data.predict[0].images[1]: no such file or folder: "
            f"{COCO_SAMPLE / 'nowhere.jpg'}",
        ),
        (
            {},
            SEGMENTATION_ONLY,
            "findlit: config error: data.predict[0].prompts: free-text prompts need the grounding task",
        ),
    ],
    ids=["empty-request", "missing-image", "model-without-grounding"],
)
def test_predict_request_errors_end_the_run_with_exit_2(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    fields: dict[str, Any],
    model: dict[str, Any] | None,
    expected: str,
) -> None:
    """Found before a checkpoint is loaded (by the DataModule, or the model's setup): none is needed."""
    configs = [tiny_config(tmp_path), predict_partial(tmp_path, "request", **fields)]
    if model is not None:
        configs.append(tmp_path / "model.yaml")
        configs[-1].write_text(yaml.safe_dump({"model": model}))
    arguments = [argument for path in configs for argument in ("--config", str(path))]
    out = tmp_path / "out"
    err = failed_run(capsys, "predict", *arguments, "--prediction_writer.directory", str(out))
    assert expected in err
    assert not out.exists()


def test_predict_key_typo_is_a_parse_error_naming_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tiny_config(tmp_path)
    typo = predict_partial(tmp_path, "typo", promts=["a typo"])
    err = failed_run(capsys, "predict", "--config", str(config), "--config", str(typo))
    assert "data.predict" in err and "promts" in err


@pytest.mark.parametrize("bug", [RuntimeError, ValueError, FileExistsError])
def test_other_exceptions_keep_their_traceback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, bug: type[Exception]
) -> None:
    """Only findlit's own error types become exit code 2: anything else is a bug to be seen."""
    config = tiny_config(tmp_path)

    def broken_setup(self: MultiTaskDataModule, stage: str) -> None:
        raise bug("a bug in setup")

    monkeypatch.setattr(MultiTaskDataModule, "setup", broken_setup)
    with pytest.raises(bug, match="a bug in setup"):
        main(["validate", "--config", str(config)])


@pytest.mark.slow
def test_console_script_reports_a_missing_dataset_file_without_traceback(tmp_path: Path) -> None:
    config = tiny_config(tmp_path)
    missing = tmp_path / "data" / "annotations" / "panoptic_train.json"
    missing.unlink()
    # the findlit of this checkout, whatever the environment's editable install points to
    paths = [str(REPO / "src"), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    result = subprocess.run(
        [sys.executable, "-m", "findlit", "fit", "--config", str(config)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(paths)},
        capture_output=True,
        text=True,
        timeout=600,  # an import of torch and Lightning on a busy machine takes minutes
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    key = "data.train[0].paths.panoptic_json"
    assert f"findlit: data error: file not found [file {missing}; set by config key '{key}']" in result.stderr


WANDB_BLOCK = 32768
"""Block size of W&B's run file (LevelDB's log format)."""


def wandb_records(path: Path) -> Iterator[Any]:
    """The protobuf records of an offline W&B run file (a LevelDB-style log of 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B run file"
    position, payload = 7, b""
    while position + 7 <= len(data):
        if WANDB_BLOCK - position % WANDB_BLOCK < 7:  # a block's tail too short for a header is padding
            position += WANDB_BLOCK - position % WANDB_BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        payload += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (0, 1, 4):  # zero padding, a full record, or a record's last fragment
            if payload:
                record = wandb_internal_pb2.Record()
                record.ParseFromString(payload)
                yield record
            payload = b""


def completed_wandb_records(path: Path, timeout: float = 60.0) -> list[Any]:
    """The records of an offline run file once W&B has written all of it (its last record, ``exit``).

    ``Run.finish()`` returns when wandb-core's stream has shut down, but its writer puts the file's
    buffered tail on disk a moment later: under load, a run file read right after ``finish()``
    lacked its history and exit records, which were there when read again (stress run of
    2026-12-06, round 3 under load). Records are written in order, so the exit record means the
    whole file is there.
    """
    from google.protobuf.message import DecodeError  # installed with wandb, an optional extra

    deadline = time.monotonic() + timeout
    while True:
        try:
            records = list(wandb_records(path))
        except DecodeError:  # the tail of a record being written
            records = []
        if any(record.WhichOneof("record_type") == "exit" for record in records):
            return records
        assert time.monotonic() < deadline, f"{path}: no exit record {timeout:.0f} s after finish()"
        time.sleep(0.1)


@pytest.mark.slow
def test_fit_with_the_wandb_config_offline_logs_metrics_and_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("wandb")
    for variable in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(variable, str(tmp_path / "wandb_home"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = tiny_config(tmp_path)
    # the tiny config turns the bar off; the wandb run keeps findlit's default one
    tiny = yaml.safe_load(config.read_text())
    del tiny["trainer"]["enable_progress_bar"]
    config.write_text(yaml.safe_dump(tiny))
    save_dir = tmp_path / "wandb_logs"
    cli = FindLightningCLI(
        args=[
            "fit",
            *("--config", str(config), "--config", str(WANDB)),
            *("--trainer.logger.init_args.save_dir", str(save_dir)),
            *("--trainer.max_steps", "2"),
        ]
    )
    assert isinstance(cli.trainer.progress_bar_callback, RichProgressBar)
    logger = cli.trainer.logger
    assert isinstance(logger, WandbLogger)
    run_id = logger.version
    assert isinstance(run_id, str)
    # config.yaml in the run's own folder, next to its checkpoints, not in the shared save_dir
    run_dir = save_dir / "findlit" / run_id
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["trainer"]["max_steps"] == 2
    assert list((run_dir / "checkpoints").glob("*.ckpt"))
    assert not (save_dir / "config.yaml").exists()
    logger.experiment.finish()
    [run_file] = list(save_dir.glob("wandb/offline-run-*/run-*.wandb"))
    metrics: set[str] = set()
    logged: dict[str, Any] = {}
    for record in completed_wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            metrics |= {item.key or "/".join(item.nested_key) for item in record.history.item}
        elif kind == "config":
            logged |= {
                item.key or "/".join(item.nested_key): json.loads(item.value_json)
                for item in record.config.update
            }
    assert {"train/loss", "val/demo_panoptic/mIoU", "val/demo_refs/cIoU"} <= metrics
    # the resolved config, every section
    assert logged["trainer"]["max_steps"] == 2
    # the resolved interface: the config's options and every other one at its default
    defaults = {
        "prototype": None,
        "mask_pooling": False,
        "image_pooling": False,
        "visual_prompts": False,
        "max_visual_points": 512,
    }
    assert logged["model"]["interface"] == defaults | INTERFACE
    assert logged["data"]["steps_per_epoch"] == 2


def test_default_progress_bar_only_where_lightning_accepts_one() -> None:
    rich = {"class_path": "lightning.pytorch.callbacks.RichProgressBar"}
    tqdm = {"class_path": "lightning.pytorch.callbacks.TQDMProgressBar", "init_args": {}}
    checkpoint = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint"}
    assert wants_default_progress_bar({"enable_progress_bar": None, "callbacks": None})
    assert wants_default_progress_bar({"enable_progress_bar": True, "callbacks": [checkpoint]})
    assert not wants_default_progress_bar({"enable_progress_bar": False, "callbacks": None})
    assert not wants_default_progress_bar({"callbacks": [checkpoint, tqdm]})
    assert not wants_default_progress_bar({"callbacks": rich})
