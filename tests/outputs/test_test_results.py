"""TestResultsWriter: metrics.json and standard-format predictions of ``findlit test``."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L  # noqa: N812
import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
import yaml
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from findlit.cli.config import build_datamodule
from findlit.cli.train import FindLightningCLI
from findlit.data.decode import panoptic_id_map
from findlit.data.formats import read_coco_panoptic
from findlit.data.synthetic import generate
from findlit.outputs.overlays_sink import log_overlays_to_wandb, shorten
from findlit.outputs.test_results import (
    OutputExistsError,
    TestResultsWriter,
    metrics_document,
    metrics_table,
    run_directory,
)
from findlit.tasks.interleave import phrases_of
from findlit.tasks.registry import task_class
from tests.cli.test_train import tiny_config
from tests.encoders import tiny  # noqa: F401 - registers the "tiny_test_vision" encoder
from tests.training.test_module import data_section

FIND_TASKS = ("segmentation", "grounding", "retrieval", "interleave")

ORIG = 64
"""Side of the generated images on disk."""
TEST_SIZE = 48
"""Side the test transform resizes them to, so predictions must be resized back to ORIG."""


def _decode(rle: dict[str, Any]) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def things_cocoeval(data: Path, truth: COCO, results: COCO, image_ids: list[int]) -> COCOeval:
    """COCOeval (segm) of ``results`` on ``image_ids``, run, over the thing categories only.

    The generated instances file also holds the stuff; instance predictions are things only.
    """
    evaluation = COCOeval(truth, results, iouType="segm")
    evaluation.params.imgIds = image_ids
    panoptic = json.loads((data / "annotations" / "panoptic_val.json").read_text())
    evaluation.params.catIds = [c["id"] for c in panoptic["categories"] if c["isthing"]]
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    return evaluation


def _test_datasets(datasets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The val datasets, resized to TEST_SIZE, without interleave (it has no standard format)."""
    out = []
    for dataset in datasets:
        if dataset["task"] != "interleave":
            out.append(dataset | {"transforms": {"image_size": TEST_SIZE, "lsj": False}})
    return out


# -- unit --------------------------------------------------------------------------------------------


def test_metrics_document_is_plain_floats() -> None:
    document = metrics_document({"b": torch.tensor(0.25), "a": 2, "c": torch.tensor(float("nan"))})
    assert list(document) == ["a", "b", "c"]
    assert document == {"a": 2.0, "b": 0.25, "c": None}
    assert json.loads(json.dumps(document)) == document


def _fake_trainer(**fields: Any) -> Any:
    """What setup reads of a single-process Trainer."""
    return SimpleNamespace(
        is_global_zero=True, strategy=SimpleNamespace(broadcast=lambda v, src=0: v), **fields
    )


def test_run_directory_is_the_runs_own_folder(tmp_path: Path) -> None:
    csv = CSVLogger(tmp_path, name="csv", version=2)
    assert run_directory(_fake_trainer(loggers=[csv])) == Path(csv.log_dir) == tmp_path / "csv" / "version_2"
    # a logger without a folder per run (W&B, MLflow...): <save_dir>/<name>/<version>, not its save_dir
    remote = SimpleNamespace(name="project", version="abc123", save_dir=str(tmp_path / "wandb"))
    assert run_directory(_fake_trainer(loggers=[remote])) == tmp_path / "wandb" / "project" / "abc123"
    numbered = SimpleNamespace(name="project", version=7, save_dir=None)
    trainer = _fake_trainer(loggers=[numbered], default_root_dir=str(tmp_path))
    assert run_directory(trainer) == tmp_path / "project" / "version_7"
    assert run_directory(_fake_trainer(loggers=[], default_root_dir=str(tmp_path))) == tmp_path


@pytest.mark.parametrize("existing", ["metrics.json", "predictions/old.json", "overlays/demo/old.png"])
def test_refuses_earlier_results(tmp_path: Path, existing: str) -> None:
    (tmp_path / existing).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / existing).write_text("{}")
    trainer = _fake_trainer(default_root_dir=str(tmp_path), loggers=[])
    writer = TestResultsWriter()
    with pytest.raises(OutputExistsError, match=Path(existing).parts[0]):
        writer.setup(trainer, None, "test")  # type: ignore[arg-type]
    assert (tmp_path / existing).read_text() == "{}"
    writer.setup(trainer, None, "fit")  # acts only in test
    TestResultsWriter(enabled=False).setup(trainer, None, "test")  # type: ignore[arg-type]
    TestResultsWriter(directory=str(tmp_path / "elsewhere")).setup(trainer, None, "test")  # type: ignore[arg-type]
    if existing.startswith("overlays"):  # without overlays, an old overlays folder is no obstacle
        TestResultsWriter(overlays=0).setup(trainer, None, "test")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="overlays"):
        TestResultsWriter(overlays=-1)


def test_metrics_table_shows_headline_fractions_in_percent() -> None:
    document = {
        "test/seg/PQ": 0.45678,
        "test/seg/AP": -1.0,  # torchmetrics' mAP without ground truth: not a fraction, shown as is
        "test/seg/loss": 3.5,  # not a headline metric: no column
        "test/refs/cIoU": 1.0,
        "test/refs/mIoU": None,  # NaN in metrics.json
        "val/other/PQ": 0.1,  # another stage
        "test/caps/IR@1": 0.0,
    }
    lines = metrics_table(document).splitlines()
    assert lines[0] == "test metrics (%):"
    assert lines[1].split() == ["dataset", "PQ", "AP", "mIoU", "cIoU", "IR@1"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert rows == {
        "seg": ["45.7", "-1", "-", "-", "-"],
        "refs": ["-", "-", "nan", "100.0", "-"],
        "caps": ["-", "-", "-", "-", "0.0"],
    }
    assert len({len(line) for line in lines[1:]}) == 1  # aligned columns
    assert metrics_table({"test/seg/loss": 1.0}) == ""


def test_metrics_table_shows_clicks_as_counts() -> None:
    """NoC@85 is a number of clicks: 1.0 click is 1.00, not 100 %."""
    document = {
        "test/clicks/mIoU@1": 0.755,
        "test/clicks/NoC@85": 1.0,
        "test/entities/cIoU": 0.9,
        "test/entities/visual_cIoU": 0.85,
    }
    lines = metrics_table(document).splitlines()
    assert lines[0] == "test metrics (%; NoC@85 in clicks):"
    assert lines[1].split() == ["dataset", "cIoU", "visual_cIoU", "mIoU@1", "NoC@85"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert rows == {"clicks": ["-", "-", "75.5", "1.00"], "entities": ["90.0", "85.0", "-", "-"]}


def test_shorten_cuts_long_sentences_at_a_word() -> None:
    assert shorten("  the  red\ncar ") == "the red car"
    short = shorten("the small dog sitting on the left of the wooden bench", limit=20)
    assert short == "the small dog…" and len(short) <= 20
    assert len(shorten("x" * 50, limit=10)) == 10


def test_overlays_go_to_every_wandb_logger_only(tmp_path: Path) -> None:
    class Recording(WandbLogger):  # a WandbLogger that records instead of starting a run
        def __init__(self) -> None:
            self.calls: list[dict[str, Any]] = []

        def log_image(self, key: str, images: list[Any], step: int | None = None, **kwargs: Any) -> None:
            self.calls.append({"key": key, "images": images, **kwargs})

    first, second = Recording(), Recording()
    written = [(tmp_path / "a.png", "a: 2 masks"), (tmp_path / "b.png", "b: 0 masks")]
    loggers = [CSVLogger(tmp_path), first, SimpleNamespace(log_image=None), second]
    assert log_overlays_to_wandb(loggers, "test/x/overlays", written) == 2
    expected = {
        "key": "test/x/overlays",
        "images": [str(tmp_path / "a.png"), str(tmp_path / "b.png")],
        "caption": ["a: 2 masks", "b: 0 masks"],
    }
    assert first.calls == second.calls == [expected]
    assert log_overlays_to_wandb(loggers, "test/x/overlays", []) == 0


# -- the ground truth, written as predictions through a real Trainer ----------------------------------


def _embedding(image_id: int) -> torch.Tensor:
    return F.normalize(torch.randn(32, generator=torch.Generator().manual_seed(image_id)), dim=0)


class GroundTruthModule(L.LightningModule):
    """test_step returns each image's ground truth in the prediction format of the FIND tasks."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        # the tasks choose the writers and overlays of their datasets, as a FINDModule's do
        self.tasks = torch.nn.ModuleDict({name: task_class(name)() for name in FIND_TASKS})

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, Any]]:
        name = f"test/{batch['dataset']}/images"
        self.log(name, float(len(batch["image_ids"])), reduce_fx="sum", add_dataloader_idx=False)
        predictions = []
        for b, target in enumerate(batch["targets"]):
            h, w = batch["image_sizes"][b]
            image_id = batch["image_ids"][b]
            if batch["task"] == "segmentation":
                masks = target["masks"][:, :h, :w]
                ids = torch.zeros(h, w, dtype=torch.int64)
                for k, mask in enumerate(masks):
                    ids[mask] = k + 1
                labels = target["labels"]
                segments = [
                    {"id": k + 1, "category": int(label), "isthing": bool(thing), "score": 1.0}
                    for k, (label, thing) in enumerate(zip(labels, target["is_thing"], strict=True))
                ]
                things = target["is_thing"]
                predictions.append(
                    {
                        "panoptic": (ids, segments),
                        "instance": {
                            "masks": masks[things],
                            "labels": labels[things],
                            "scores": torch.ones(int(things.sum())),
                        },
                        "semantic": torch.zeros(h, w, dtype=torch.int64),
                    }
                )
            elif batch["task"] == "grounding":
                masks = target["masks"][target["sentence_targets"]][:, :h, :w]
                scores = torch.ones(len(masks))
                predictions.append({"masks": masks, "scores": scores, "sentences": target["sentences"]})
            else:  # retrieval: captions close to their own image
                image = _embedding(image_id)
                captions = F.normalize(image + 0.01 * torch.randn(len(target["captions"]), 32), dim=-1)
                predictions.append({"image_embedding": image, "caption_embeddings": captions})
        return predictions


@pytest.fixture(scope="module")
def ground_truth_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("ground_truth")
    generate(root / "data", train=1, val=4, size=ORIG, seed=0)
    section = data_section(root / "data")
    section.update(train=[], test=_test_datasets(section["val"]), val=[])
    datamodule = build_datamodule(section)
    trainer = L.Trainer(
        accelerator="cpu",
        logger=CSVLogger(root / "logs"),
        callbacks=[TestResultsWriter(retrieval_top_k=3, overlays=0)],
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    trainer.test(GroundTruthModule(), datamodule=datamodule)
    return {"root": root, "data": root / "data", "run": Path(str(trainer.log_dir)), "trainer": trainer}


def test_ground_truth_panoptic_reads_back_at_the_original_size(ground_truth_run: dict[str, Any]) -> None:
    data, folder = ground_truth_run["data"], ground_truth_run["run"] / "predictions" / "demo_panoptic"
    truth = read_coco_panoptic(
        data / "annotations" / "panoptic_val.json", data / "panoptic_val", data / "val"
    )
    written = read_coco_panoptic(folder / "panoptic_predictions.json", folder / "panoptic", data / "val")
    assert written.categories == truth.categories
    truth_by_id = {record.image.id: record for record in truth.records}
    assert sorted(r.image.id for r in written.records) == sorted(truth_by_id)
    for record in written.records:
        expected = truth_by_id[record.image.id]
        assert record.image.path.name == expected.image.path.name
        predicted_ids, true_ids = panoptic_id_map(record), panoptic_id_map(expected)
        assert predicted_ids.shape == true_ids.shape == (ORIG, ORIG)
        # every ground-truth segment comes back, with its category, up to the 64 -> 48 -> 64 resize
        predicted = {s.id: s for s in record.segments}
        for segment in expected.segments:
            if segment.iscrowd:
                continue
            truth_mask = true_ids == segment.id
            overlaps = [(_iou(predicted_ids == p.id, truth_mask), p.category_id) for p in predicted.values()]
            iou, category = max(overlaps)
            assert category == segment.category_id
            # small shapes lose a rim of pixels; large ones come back nearly whole
            assert iou > (0.95 if segment.area >= 1000 else 0.6)


def test_ground_truth_instances_score_with_cocoeval(ground_truth_run: dict[str, Any]) -> None:
    data, folder = ground_truth_run["data"], ground_truth_run["run"] / "predictions" / "demo_panoptic"
    truth = COCO(str(data / "annotations" / "instances_val.json"))
    results = truth.loadRes(str(folder / "instances_results.json"))
    for annotation in results.anns.values():
        image = truth.imgs[annotation["image_id"]]
        assert tuple(annotation["segmentation"]["size"]) == (image["height"], image["width"])
    evaluation = things_cocoeval(data, truth, results, sorted(results.getImgIds()))
    assert evaluation.stats[1] > 0.95  # AP50 of the ground truth, resized there and back


def test_ground_truth_grounding_carries_ref_ids(ground_truth_run: dict[str, Any]) -> None:
    data = ground_truth_run["data"]
    entries = json.loads(
        (ground_truth_run["run"] / "predictions" / "demo_refs" / "grounding_results.json").read_text()
    )
    refs = {ref["ref_id"]: ref for ref in json.loads((data / "annotations" / "refs_val.json").read_text())}
    instances = COCO(str(data / "annotations" / "instances_val.json"))
    assert entries and len({e["image_id"] for e in entries}) == 4
    for entry in entries:
        ref = refs[entry["ref_id"]]
        assert ref["image_id"] == entry["image_id"]
        assert ref["sentences"][entry["sentence_id"]]["raw"] == entry["sentence"]
        mask = _decode(entry["segmentation"])
        assert mask.shape == (ORIG, ORIG)
        annotation = instances.anns[ref["ann_id"]]
        iou = _iou(mask, instances.annToMask(annotation).astype(bool))
        assert iou > (0.95 if annotation["area"] >= 1000 else 0.6)


def test_ground_truth_retrieval_ranks_own_captions_first(ground_truth_run: dict[str, Any]) -> None:
    folder = ground_truth_run["run"] / "predictions" / "demo_captions"
    captions = json.loads((folder / "retrieval_captions.json").read_text())
    image_of = {caption["id"]: caption["image_id"] for caption in captions}
    assert len(image_of) == len(captions) and len({c["image_id"] for c in captions}) == 4
    results = json.loads((folder / "retrieval_results.json").read_text())
    images = [r for r in results if r["query_kind"] == "image"]
    texts = [r for r in results if r["query_kind"] == "text"]
    assert len(images) == 4 and len(texts) == len(captions)
    for result in images:
        assert len(result["ranked_ids"]) == 3  # retrieval_top_k
        assert all(image_of[c] == result["query_id"] for c in result["ranked_ids"])
    for result in texts:
        assert result["ranked_ids"][0] == image_of[result["query_id"]]


def test_ground_truth_without_overlays(ground_truth_run: dict[str, Any]) -> None:
    assert not (ground_truth_run["run"] / "overlays").exists()


def test_ground_truth_metrics_json(ground_truth_run: dict[str, Any]) -> None:
    metrics = json.loads((ground_truth_run["run"] / "metrics.json").read_text())
    assert metrics == {f"test/{name}/images": 4.0 for name in ("demo_panoptic", "demo_captions", "demo_refs")}
    callback_metrics = ground_truth_run["trainer"].callback_metrics
    assert metrics == {k: float(v) for k, v in callback_metrics.items()}


# -- overlays, W&B and the metrics table -----------------------------------------------------------------

OVERLAYS = 2
"""Overlays per dataset in the overlay run (of 4 test images each)."""

WANDB = importlib.util.find_spec("wandb") is not None
"""wandb is an optional extra (findlit[wandb]): without it the overlay run has no W&B logger."""

HEADLINE = {
    "segmentation": {"PQ": 0.4567, "AP": 0.25},
    "grounding": {"cIoU": 0.8},
    "retrieval": {"IR@1": 1.0},
}
"""What OverlayModule logs for every dataset of a task (interleave: nothing)."""


class OverlayModule(GroundTruthModule):
    """The ground truth, for interleave phrases too; logs made-up headline metrics."""

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, Any]]:
        size = len(batch["image_ids"])
        for name, value in HEADLINE.get(batch["task"], {}).items():
            self.log(f"test/{batch['dataset']}/{name}", value, batch_size=size, add_dataloader_idx=False)
        if batch["task"] != "interleave":
            return super().test_step(batch, batch_idx, dataloader_idx)
        self.log(f"test/{batch['dataset']}/images", float(size), reduce_fx="sum", add_dataloader_idx=False)
        predictions = []
        for b, target in enumerate(batch["targets"]):
            h, w = batch["image_sizes"][b]
            phrases, index = phrases_of(target)
            masks = target["masks"][torch.tensor(index, dtype=torch.int64)][:, :h, :w]
            predictions.append(
                {"masks": masks, "scores": torch.full((len(phrases),), 0.5), "phrases": phrases}
            )
        return predictions


class RecordingWandbLogger(WandbLogger):
    """A real (offline) WandbLogger that also records its ``log_image`` calls."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.images: list[dict[str, Any]] = []

    def log_image(self, key: str, images: list[Any], step: int | None = None, **kwargs: Any) -> None:
        self.images.append({"key": key, "images": list(images), **kwargs})
        super().log_image(key, images, step, **kwargs)


@pytest.fixture(scope="module")
def overlay_run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A test run of OverlayModule with a CSV logger and, when wandb is installed, an offline W&B run."""
    root = tmp_path_factory.mktemp("overlays")
    generate(root / "data", train=1, val=4, size=ORIG, seed=0)
    section = data_section(root / "data")
    resized = {"image_size": TEST_SIZE, "lsj": False}
    section.update(train=[], test=[d | {"transforms": resized} for d in section["val"]], val=[])
    datamodule = build_datamodule(section)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_MODE", "offline")
        patch.setenv("WANDB_DIR", str(root / "wandb"))
        patch.setenv("WANDB_SILENT", "true")
        loggers: list[Any] = [CSVLogger(root / "logs")]
        if WANDB:
            loggers.append(
                RecordingWandbLogger(project="findlit-test", save_dir=str(root / "wandb"), offline=True)
            )
        trainer = L.Trainer(
            accelerator="cpu",
            logger=loggers,
            callbacks=[TestResultsWriter(retrieval_top_k=3, overlays=OVERLAYS)],
            enable_progress_bar=False,
            enable_model_summary=False,
            use_distributed_sampler=False,
        )
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            trainer.test(OverlayModule(), datamodule=datamodule)
        if WANDB:
            import wandb

            wandb.finish()
    yield {
        "data": root / "data",
        "run": root / "logs" / "lightning_logs" / "version_0",
        "datamodule": datamodule,
        "wandb": loggers[-1] if WANDB else None,
        "out": out.getvalue(),
    }


def _first_images(overlay_run: dict[str, Any], name: str) -> list[Path]:
    dataset = next(d for d in overlay_run["datamodule"].stage_datasets("test") if d.name == name)
    return [record.image.path for record in dataset.records[:OVERLAYS]]


def test_overlays_of_the_first_images_at_their_size_on_disk(overlay_run: dict[str, Any]) -> None:
    folder = overlay_run["run"] / "overlays"
    assert sorted(p.name for p in folder.iterdir()) == ["demo_entities", "demo_panoptic", "demo_refs"]
    for name in ("demo_entities", "demo_panoptic", "demo_refs"):
        images = _first_images(overlay_run, name)
        assert sorted(p.name for p in (folder / name).iterdir()) == sorted(f"{p.stem}.png" for p in images)
        for image in images:
            with Image.open(folder / name / f"{image.stem}.png") as overlay:
                assert overlay.format == "PNG" and overlay.mode == "RGB"
                assert overlay.size == (ORIG, ORIG)
                drawn = np.asarray(overlay)
            raw = np.asarray(Image.open(image).convert("RGB"))
            assert (drawn != raw).any(axis=-1).mean() > 0.05


def _written_masks(overlay_run: dict[str, Any], name: str) -> dict[str, np.ndarray]:
    """Image stem -> union of the masks predicted for it, read back from the written predictions."""
    folder = overlay_run["run"] / "predictions" / name
    if name == "demo_panoptic":
        images = overlay_run["data"] / "val"
        panoptic = read_coco_panoptic(folder / "panoptic_predictions.json", folder / "panoptic", images)
        return {record.image.path.stem: panoptic_id_map(record) != 0 for record in panoptic.records}
    dataset = next(d for d in overlay_run["datamodule"].stage_datasets("test") if d.name == name)
    stems = {record.image.id: record.image.path.stem for record in dataset.records}
    union: dict[str, np.ndarray] = {}
    for entry in json.loads((folder / "grounding_results.json").read_text()):
        stem = stems[entry["image_id"]]
        union[stem] = union.get(stem, np.zeros((ORIG, ORIG), dtype=bool)) | _decode(entry["segmentation"])
    return union


@pytest.mark.parametrize("name", ["demo_panoptic", "demo_refs"])
def test_overlays_tint_the_predicted_masks(overlay_run: dict[str, Any], name: str) -> None:
    masks = _written_masks(overlay_run, name)  # the same predictions, at the size on disk
    for image in _first_images(overlay_run, name):
        inside = masks[image.stem]
        assert inside.sum() > 50
        drawn = np.asarray(Image.open(overlay_run["run"] / "overlays" / name / f"{image.stem}.png"))
        raw = np.asarray(Image.open(image).convert("RGB"))
        changed = (drawn != raw).any(axis=-1)
        assert changed[inside].mean() > 0.9  # tinted (or outlined, or labelled) inside the masks


@pytest.mark.skipif(
    not WANDB, reason="wandb is not installed (test_overlays_go_to_every_wandb_logger_only runs)"
)
def test_overlays_logged_to_wandb(overlay_run: dict[str, Any]) -> None:
    calls = {call["key"]: call for call in overlay_run["wandb"].images}
    names = ("demo_entities", "demo_panoptic", "demo_refs")
    assert sorted(calls) == [f"test/{name}/overlays" for name in names]
    for name in names:
        call = calls[f"test/{name}/overlays"]
        expected = [
            str(overlay_run["run"] / "overlays" / name / f"{p.stem}.png")
            for p in _first_images(overlay_run, name)
        ]
        assert sorted(call["images"]) == sorted(expected)
        assert len(call["caption"]) == OVERLAYS


def test_printed_table_matches_metrics_json(overlay_run: dict[str, Any]) -> None:
    run, out = overlay_run["run"], overlay_run["out"]
    metrics = json.loads((run / "metrics.json").read_text())
    lines = out.splitlines()
    start = lines.index("test metrics (%):")
    header = lines[start + 1].split()
    assert header == ["dataset", "PQ", "AP", "cIoU", "IR@1"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[start + 2 : start + 6]}
    assert sorted(rows) == ["demo_captions", "demo_entities", "demo_panoptic", "demo_refs"]
    for dataset, cells in rows.items():
        for column, cell in zip(header[1:], cells, strict=True):
            value = metrics.get(f"test/{dataset}/{column}")
            assert cell == ("-" if value is None else f"{100 * value:.1f}")
    assert rows["demo_panoptic"][:2] == ["45.7", "25.0"]
    for label, path in (
        ("metrics", run / "metrics.json"),
        ("predictions", run / "predictions"),
        ("overlays", run / "overlays"),
    ):
        assert f"{label}: {path}" in lines[start + 6 :]


# -- findlit test through the CLI ----------------------------------------------------------------------


@pytest.mark.slow
def test_findlit_test_writes_metrics_and_predictions(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(sys, "argv", ["findlit"])  # LightningCLI warns when given args and argv
    # rich fits Lightning's results table to the terminal (80 columns when there is none) and cuts
    # names such as test/demo_entities/visual_P@0.5 with an ellipsis: a terminal wide enough for them
    monkeypatch.setenv("COLUMNS", "200")
    path = tiny_config(tmp_path)
    config = yaml.safe_load(path.read_text())
    config["model"]["vision_encoder"] = {"name": "tiny_test_vision", "options": {"seed": 0}}
    # keep every query, so the untrained model predicts panoptic segments too
    config["model"]["task_options"]["segmentation"].update(object_mask_threshold=0.0, overlap_threshold=0.0)
    config["data"]["test"] = [*_test_datasets(config["data"]["val"]), config["data"]["val"][-1]]
    path.write_text(yaml.safe_dump(config))

    cli = FindLightningCLI(args=["test", "--config", str(path)])
    out = capsys.readouterr().out
    run = tmp_path / "logs" / "lightning_logs" / "version_0"
    assert f"metrics: {run / 'metrics.json'}" in out
    assert f"predictions: {run / 'predictions'}" in out

    # every metric, as printed in the results table, as the same floats
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics == {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    assert {"test/demo_panoptic/mIoU", "test/demo_captions/IR@1", "test/demo_refs/cIoU"} <= set(metrics)
    assert "test/demo_entities/mIoU" in metrics
    for name in metrics:
        assert name in out

    predictions = run / "predictions"
    assert sorted(p.name for p in predictions.iterdir()) == ["demo_captions", "demo_panoptic", "demo_refs"]
    data = tmp_path / "data"
    panoptic = read_coco_panoptic(
        predictions / "demo_panoptic" / "panoptic_predictions.json",
        predictions / "demo_panoptic" / "panoptic",
        data / "val",
    )
    assert len(panoptic.records) == 2  # limit_test_batches: 1 batch of 2
    assert any(record.segments for record in panoptic.records)
    for record in panoptic.records:
        ids = panoptic_id_map(record)
        assert ids.shape == (ORIG, ORIG)
        assert set(np.unique(ids).tolist()) - {0} == {s.id for s in record.segments}

    truth = COCO(str(data / "annotations" / "instances_val.json"))
    results = truth.loadRes(str(predictions / "demo_panoptic" / "instances_results.json"))
    evaluation = COCOeval(truth, results, iouType="segm")
    evaluation.params.imgIds = sorted(results.getImgIds())
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert len(evaluation.stats) == 12

    grounding = json.loads((predictions / "demo_refs" / "grounding_results.json").read_text())
    refs = {ref["ref_id"]: ref for ref in json.loads((data / "annotations" / "refs_val.json").read_text())}
    assert grounding
    for entry in grounding:
        assert refs[entry["ref_id"]]["sentences"][entry["sentence_id"]]["raw"] == entry["sentence"]
        assert _decode(entry["segmentation"]).shape == (ORIG, ORIG)

    # the logged recall@1 follows from the written rankings
    results = json.loads((predictions / "demo_captions" / "retrieval_results.json").read_text())
    captions = json.loads((predictions / "demo_captions" / "retrieval_captions.json").read_text())
    image_of = {caption["id"]: caption["image_id"] for caption in captions}
    texts = [r for r in results if r["query_kind"] == "text"]
    images = [r for r in results if r["query_kind"] == "image"]
    assert len(texts) == len(captions) and len(images) == 2
    image_recall = np.mean([r["ranked_ids"][0] == image_of[r["query_id"]] for r in texts])
    text_recall = np.mean([image_of[r["ranked_ids"][0]] == r["query_id"] for r in images])
    assert metrics["test/demo_captions/IR@1"] == pytest.approx(image_recall)
    assert metrics["test/demo_captions/TR@1"] == pytest.approx(text_recall)

    # overlays of the untrained model's predictions (limit_test_batches: 2 images per dataset), no
    # retrieval ones, and the headline table with a row per dataset
    overlays = run / "overlays"
    assert f"overlays: {overlays}" in out
    assert sorted(p.name for p in overlays.iterdir()) == ["demo_entities", "demo_panoptic", "demo_refs"]
    for folder in overlays.iterdir():
        assert len(list(folder.glob("*.png"))) == 2
    table = out.splitlines()[out.splitlines().index("test metrics (%):") :]
    for name in ("demo_captions", "demo_entities", "demo_panoptic", "demo_refs"):
        assert any(line.split()[0] == name for line in table[2:6])
    ir1 = table[1].split().index("IR@1")
    captions_row = next(line.split() for line in table if line.startswith("demo_captions"))
    assert captions_row[ir1] == f"{100 * metrics['test/demo_captions/IR@1']:.1f}"

    # a second run into the same directory stops before testing and leaves the results alone
    before = (run / "metrics.json").read_bytes()
    with pytest.raises(OutputExistsError, match=r"metrics\.json"):
        FindLightningCLI(args=["test", "--config", str(path), "--test_results.directory", str(run)])
    assert (run / "metrics.json").read_bytes() == before

    # a config turns it off
    logs = tmp_path / "off"
    off_args = ["--test_results.enabled", "false", "--trainer.logger.init_args.save_dir", str(logs)]
    FindLightningCLI(args=["test", "--config", str(path), *off_args])
    off = logs / "lightning_logs" / "version_0"
    assert (off / "metrics.csv").is_file()
    assert not (off / "metrics.json").exists() and not (off / "predictions").exists()
    assert not (off / "overlays").exists()
