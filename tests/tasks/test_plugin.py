"""A task defined outside findlit trains and tests through the real CLI, with no change to findlit.

The toy task here predicts, per image, the fraction of the image that things cover, from the
segmentation proposals' masks: the union (per-pixel maximum) of the proposals' mask probabilities,
averaged over the image. It reads COCO panoptic datasets (their thing masks give the target), trains
with an L1 loss and is evaluated with torchmetrics' MeanAbsoluteError.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
import yaml
from torch import Tensor
from torchmetrics import MeanAbsoluteError, MetricCollection

from findlit.cli import main
from findlit.data.collate import Batch, image_origin
from findlit.errors import ConfigError
from findlit.interface.find import InterfaceOutput, InterfacePrompts
from findlit.tasks.base import EvaluatedDataset, Task, TaskContext, TaskMetrics
from findlit.tasks.registry import register_task, task_class, task_names, unregister_task
from findlit.training.module import check_dataset_tasks
from tests.cli.test_train import tiny_config
from tests.encoders import tiny  # noqa: F401 - registers the "tiny_test_vision" encoder
from tests.training.test_module import data_section

OBJECT = "proposals.vision.object"


class ThingCoverageTask(Task):
    """Per image, the fraction of its pixels covered by things, from the object proposals' masks."""

    name: ClassVar[str] = "thing_coverage"
    formats: ClassVar[tuple[str, ...]] = ("coco_panoptic",)

    def __init__(self, num_proposals: int = 8):
        super().__init__()
        self.num_proposals = num_proposals

    def prompts(self, batch: Batch, context: TaskContext) -> InterfacePrompts:
        """Object proposals only: the task reads no text."""
        return InterfacePrompts(learned={OBJECT: self.num_proposals})

    @staticmethod
    def coverage(output: InterfaceOutput, batch: Batch) -> Tensor:
        """float[B]: the mean over each image's pixels of the proposals' maximum mask probability."""
        padding = batch["padding_mask"]
        logits = output.last[OBJECT]["mask_logits"]  # [B,Q,H/4,W/4]
        union = F.interpolate(logits.float(), size=padding.shape[-2:], mode="bilinear").sigmoid().amax(1)
        values = []
        for b, (h, w) in enumerate(batch["image_sizes"]):
            top, left = image_origin(padding[b])
            values.append(union[b, top : top + h, left : left + w].mean())
        return torch.stack(values)

    @staticmethod
    def target(batch: Batch) -> Tensor:
        """float[B]: the fraction of each image's pixels inside a thing mask."""
        values = []
        for b, (h, w) in enumerate(batch["image_sizes"]):
            target = batch["targets"][b]
            top, left = image_origin(batch["padding_mask"][b])
            masks = target["masks"][target["is_thing"].bool()][:, top : top + h, left : left + w]
            values.append(masks.any(0).float().mean() if len(masks) else torch.zeros(()))
        return torch.stack(values).to(batch["padding_mask"].device)

    def losses(
        self, output: InterfaceOutput, batch: Batch, context: TaskContext
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """L1 between the predicted and the true coverage."""
        loss = F.l1_loss(self.coverage(output, batch), self.target(batch))
        return loss, {"coverage_l1": loss.detach()}

    def predict(self, output: InterfaceOutput, batch: Batch, context: TaskContext) -> list[dict[str, Any]]:
        """Per image ``{"coverage": float[]}``."""
        return [{"coverage": value} for value in self.coverage(output, batch).detach()]

    def build_metrics(self, dataset: EvaluatedDataset) -> TaskMetrics | None:
        """The mean absolute error of the coverage."""
        return MetricCollection({"coverage_mae": MeanAbsoluteError()})

    def update_metrics(
        self, metrics: TaskMetrics, batch: Batch, predictions: list[dict[str, Any]], context: TaskContext
    ) -> None:
        """The batch's predicted coverages against the true ones."""
        predicted = torch.stack([p["coverage"] for p in predictions])
        metrics.update(predicted, self.target(batch).to(predicted.device))


@pytest.fixture
def coverage_task() -> Iterator[type[ThingCoverageTask]]:
    """The toy task, registered for the test only."""
    register_task(ThingCoverageTask)
    try:
        yield ThingCoverageTask
    finally:
        unregister_task(ThingCoverageTask.name)


def _panoptic(datasets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The COCO panoptic datasets of a data section, fed to the toy task."""
    return [d | {"task": ThingCoverageTask.name} for d in datasets if d["format"] == "coco_panoptic"]


def test_register_and_unregister(coverage_task: type[ThingCoverageTask]) -> None:
    assert task_class("thing_coverage") is coverage_task
    assert task_names()[:4] == ["segmentation", "grounding", "retrieval", "interleave"]
    with pytest.raises(ValueError, match="registered already"):
        register_task(type("Other", (ThingCoverageTask,), {}))
    unregister_task(coverage_task.name)
    with pytest.raises(
        ConfigError, match=r"data\.train\[0\]\.task: unknown task 'thing_coverage'; known: \["
    ):
        task_class("thing_coverage", "data.train[0].task")


def test_dataset_tasks_are_checked_against_the_registry(coverage_task: type[ThingCoverageTask]) -> None:
    from findlit.data.config import DatasetConfig

    panoptic = DatasetConfig("a", "thing_coverage", "coco_panoptic")
    check_dataset_tasks({"train": [panoptic]}, ["thing_coverage"])
    captions = DatasetConfig("b", "thing_coverage", "coco_captions")
    with pytest.raises(ConfigError, match=r"^data\.val\[1\]\.format: 'coco_captions' cannot feed task"):
        check_dataset_tasks({"val": [panoptic, captions]}, ["thing_coverage"])
    with pytest.raises(ConfigError, match=r"^data\.test\[0\]\.task: the model has no task 'thing_coverage'"):
        check_dataset_tasks({"test": [panoptic]}, ["segmentation"])
    with pytest.raises(ConfigError, match=r"^data\.train\[0\]\.task: unknown task 'depth'"):
        check_dataset_tasks({"train": [DatasetConfig("c", "depth", "coco_panoptic")]}, ["depth"])


def test_a_task_from_outside_findlit_fits_and_tests_through_the_cli(
    coverage_task: type[ThingCoverageTask],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setattr(sys, "argv", ["findlit"])  # LightningCLI warns when given args and argv
    path = tiny_config(tmp_path)
    config = yaml.safe_load(path.read_text())
    config["model"].update(
        vision_encoder={"name": "tiny_test_vision", "options": {"seed": 0}},
        tasks=[coverage_task.name],
        task_options={},
    )
    data = data_section(tmp_path / "data")
    config["data"].update(
        train=_panoptic(data["train"]), val=_panoptic(data["val"]), test=_panoptic(data["val"])
    )
    path.write_text(yaml.safe_dump(config))

    assert main(["fit", "--config", str(path), "--trainer.max_steps", "2"]) == 0, capsys.readouterr().err
    runs = tmp_path / "logs" / "lightning_logs"
    checkpoints = sorted((runs / "version_0" / "checkpoints").glob("*.ckpt"))
    assert checkpoints
    code = main(["test", "--config", str(path), "--ckpt_path", str(checkpoints[-1])])
    assert code == 0, capsys.readouterr().err

    metrics = json.loads((runs / "version_1" / "metrics.json").read_text())
    name = f"test/{config['data']['test'][0]['name']}/coverage_mae"
    assert metrics[name] is not None and 0.0 <= metrics[name] <= 1.0
    # the test-results writer wrote no predictions for a task without a standard format
    assert not (runs / "version_1" / "predictions").exists() or not any(
        (runs / "version_1" / "predictions").iterdir()
    )
