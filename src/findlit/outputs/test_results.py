"""What ``findlit test`` leaves behind: ``metrics.json`` and the predictions in standard formats.

:class:`TestResultsWriter` is a Lightning callback. During ``trainer.test`` it receives the
predictions that :meth:`FINDModule.test_step <findlit.training.module.FINDModule.test_step>` returns and
writes, under ``<directory>`` (default: the run's folder, :func:`run_directory`)::

    metrics.json                                 every metric of the test run, name -> float
    predictions/<dataset>/...                    what the dataset's task writes; findlit's tasks:
    predictions/<dataset>/panoptic/<stem>.png    segmentation: COCO panoptic PNGs ...
    predictions/<dataset>/panoptic_predictions.json  ... and their JSON (panopticapi's pq_compute)
    predictions/<dataset>/instances_results.json segmentation: COCO results, RLE masks (COCO.loadRes)
    predictions/<dataset>/grounding_results.json grounding: one entry per sentence, with ref ids
    predictions/<dataset>/retrieval_results.json retrieval: ranked galleries of every query
    predictions/<dataset>/retrieval_captions.json retrieval: the caption ids used above
    overlays/<dataset>/<stem>.png                the first ``overlays`` images: masks, labels, scores

At the end it prints a table of the headline metrics, one row per dataset (:func:`metrics_table`),
and the paths above; Lightning's own table of every metric follows it.

Each test dataset's task (the module's ``tasks[dataset.task]``, a :class:`~findlit.tasks.base.Task`)
chooses the writer of its predictions (``results_sink``, one of :mod:`findlit.outputs.result_sinks`,
or none: interleave predictions have no standard format) and what its overlays draw
(``overlay_layers``); this callback names no task. Masks are resized from the transformed image
size to the size on disk with nearest-neighbour sampling.

Overlays (:mod:`findlit.outputs.overlays_sink`) are drawn at the image's size on disk, for every
dataset whose task draws any (not retrieval), and logged to W&B when a ``WandbLogger`` is among the
trainer's loggers (key ``test/<dataset>/overlays``).

Nothing is overwritten: the run stops before testing when ``metrics.json`` or a non-empty
``predictions`` or ``overlays`` folder already exists in the directory.

Under DDP each rank sees a disjoint shard (the DataModule's ``ShardedSampler``). Each rank writes
its own panoptic PNGs (their names differ); the JSON entries and retrieval embeddings are gathered
to every rank with ``all_gather_object`` and rank 0 writes the JSON files and ``metrics.json``.
Overlays are drawn by rank 0 alone, of the first images of its own shard: the first ``overlays``
images of each dataset in a single process, every ``world_size``-th of them under DDP.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import lightning as L  # noqa: N812
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from findlit.errors import OutputExistsError
from findlit.nearest_resize import resize_nearest
from findlit.outputs.coco_writers import write_json_atomic
from findlit.outputs.overlays_sink import OVERLAYS_FOLDER, OverlayLayersFn, OverlaySink, log_overlays_to_wandb
from findlit.outputs.result_sinks import ResultsOptions, ResultsSink

__all__ = [
    "METRICS_NAME",
    "PREDICTIONS_FOLDER",
    "OutputExistsError",
    "TestResultsWriter",
    "metrics_document",
    "metrics_table",
    "resize_nearest",
    "run_directory",
]

METRICS_NAME = "metrics.json"
"""File name of the metrics, in the results directory."""

PREDICTIONS_FOLDER = "predictions"
"""Folder of the predictions (one subfolder per test dataset), in the results directory."""


class WritesResults(Protocol):
    """What this callback needs of a task (a :class:`~findlit.tasks.base.Task`): its sink and overlays."""

    def results_sink(
        self, folder: Path, dataset: Any, vocabulary: Any, options: ResultsOptions
    ) -> ResultsSink | None:
        """The writer of the task's test predictions of ``dataset``, or None."""

    overlay_layers: OverlayLayersFn


def _all_gather(trainer: L.Trainer, value: Any) -> list[Any]:
    """``value`` of every rank, in rank order (``[value]`` in a single process)."""
    if trainer.world_size == 1 or not torch.distributed.is_initialized():
        return [value]
    gathered: list[Any] = [None] * trainer.world_size
    torch.distributed.all_gather_object(gathered, value)
    return gathered


def run_directory(trainer: L.Trainer) -> Path:
    """The run's own folder: the log dir of a CSV or TensorBoard logger, else ``<save_dir>/<name>/<version>``.

    Loggers without a folder per run (W&B, MLflow...) have a ``log_dir`` shared by every run, so
    their run's folder is built as Lightning's ModelCheckpoint and ``config.yaml`` build it. Without
    a logger: ``trainer.default_root_dir``. Rank 0 decides; every rank must call this.
    """
    path: str | None = None
    if trainer.is_global_zero:
        first = trainer.loggers[0] if trainer.loggers else None
        if first is None:
            path = trainer.default_root_dir
        elif isinstance(first, (CSVLogger, TensorBoardLogger)):
            path = first.log_dir
        else:
            version = first.version if isinstance(first.version, str) else f"version_{first.version}"
            root = first.save_dir if first.save_dir is not None else trainer.default_root_dir
            path = str(Path(root) / str(first.name) / version)
    path = trainer.strategy.broadcast(path)
    assert path is not None  # rank 0 always sets it
    return Path(path)


def _existing_output(directory: Path, predictions: bool, overlays: bool = False) -> str | None:
    """Why writing into ``directory`` would overwrite something, or None."""
    metrics = directory / METRICS_NAME
    if metrics.exists():
        return f"{metrics} exists"
    for name, wanted in ((PREDICTIONS_FOLDER, predictions), (OVERLAYS_FOLDER, overlays)):
        folder = directory / name
        if wanted and folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            return f"{folder} exists and is not an empty folder"
    return None


class TestResultsWriter(L.Callback):
    """Write ``metrics.json``, standard-format predictions and overlays of a ``trainer.test`` run.

    The run stops before testing, with :class:`OutputExistsError` naming the file, when
    ``metrics.json`` or a non-empty ``predictions`` (or, with overlays, ``overlays``) folder exists
    in the directory.

    Args:
        enabled: False turns the callback off.
        directory: where to write (default: the run's folder, see :func:`run_directory`).
        predictions: write the predictions too (False: only ``metrics.json``).
        retrieval_top_k: length of each ranked retrieval gallery (None: the whole gallery, which
            grows as images x captions). 10 covers R@1/5/10.
        overlays: how many images of each test dataset get an overlay PNG (the first ones rank 0
            tests); 0 writes none.

    """

    __test__ = False  # not a pytest test class, despite its name

    def __init__(
        self,
        enabled: bool = True,
        directory: str | None = None,
        predictions: bool = True,
        retrieval_top_k: int | None = 10,
        overlays: int = 8,
    ):
        if retrieval_top_k is not None and retrieval_top_k < 1:
            raise ValueError(f"retrieval_top_k must be positive or None, got {retrieval_top_k}")
        if overlays < 0:
            raise ValueError(f"overlays must be 0 (none) or positive, got {overlays}")
        self.enabled = enabled
        self.directory = directory
        self.predictions = predictions
        self.retrieval_top_k = retrieval_top_k
        self.overlays = overlays
        self.root: Path | None = None
        self.sinks: dict[str, ResultsSink] = {}
        self.overlay_sinks: dict[str, OverlaySink] = {}
        self.written: list[Path] = []
        self.folders: dict[str, Path] = {}  # what this run wrote, printed after the metrics table

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Choose the directory and refuse, on every rank, one holding earlier results."""
        if stage != "test" or not self.enabled:
            return
        root = Path(self.directory) if self.directory is not None else run_directory(trainer)
        problem = (
            _existing_output(root, self.predictions, self.overlays > 0) if trainer.is_global_zero else None
        )
        problem = trainer.strategy.broadcast(problem)
        if problem is not None:
            raise OutputExistsError(
                f"{problem}; findlit test refuses to overwrite earlier results. Choose another "
                "test_results.directory or logger version, or move the old results away."
            )
        self.root = root

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Open the sinks of each test dataset (after the module built its vocabularies)."""
        self.sinks, self.overlay_sinks, self.written, self.folders = {}, {}, [], {}
        if self.root is None or not (self.predictions or self.overlays):
            return
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "stage_datasets"):
            rank_zero_warn("TestResultsWriter: no MultiTaskDataModule, so no predictions are written")
            return
        vocabularies = getattr(pl_module, "vocabularies", {})
        # the model's tasks (a FINDModule's ``tasks``) decide what each dataset's predictions become
        tasks: Mapping[str, WritesResults] = getattr(pl_module, "tasks", {})
        datasets = [
            (dataset, tasks[dataset.task])
            for dataset in datamodule.stage_datasets("test")
            if dataset.task in tasks
        ]
        if self.overlays and trainer.is_global_zero:
            for dataset, task in datasets:
                names = getattr(vocabularies.get(dataset.name, dataset), "class_names", [])
                folder = self.root / OVERLAYS_FOLDER / dataset.name
                self.overlay_sinks[dataset.name] = OverlaySink(
                    folder, dataset, names, self.overlays, task.overlay_layers
                )
        if not self.predictions:
            return
        # under DDP rank 0 checked the folder in setup and the ranks share it
        options = ResultsOptions(self.retrieval_top_k, overwrite=trainer.world_size > 1)
        for dataset, task in datasets:
            folder = self.root / PREDICTIONS_FOLDER / dataset.name
            sink = task.results_sink(folder, dataset, vocabularies.get(dataset.name, dataset), options)
            if sink is not None:
                self.sinks[dataset.name] = sink

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Hand the batch's predictions (``test_step``'s list, one dict per image) to its dataset's sinks."""
        if outputs is None:
            return
        sink = self.sinks.get(batch["dataset"])
        if sink is not None:
            sink.add(outputs, batch)
        overlays = self.overlay_sinks.get(batch["dataset"])
        if overlays is not None:
            overlays.add(outputs, batch)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Gather every rank's predictions; rank 0 writes their files and logs the overlays to W&B."""
        if self.root is None:
            return
        if self.sinks:
            gathered = _all_gather(trainer, {name: sink.payload() for name, sink in self.sinks.items()})
            if trainer.is_global_zero:
                for name, sink in self.sinks.items():
                    self.written.extend(sink.finish([payloads[name] for payloads in gathered]))
                self.folders["predictions"] = self.root / PREDICTIONS_FOLDER
        for name, overlays in self.overlay_sinks.items():
            self.written.extend(path for path, _ in overlays.written)
            log_overlays_to_wandb(trainer.loggers, f"test/{name}/overlays", overlays.written)
            if overlays.written:
                self.folders["overlays"] = self.root / OVERLAYS_FOLDER
        self.sinks, self.overlay_sinks = {}, {}

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Write every metric of the run (``trainer.callback_metrics``) to ``metrics.json`` (rank 0)."""
        if self.root is None or not trainer.is_global_zero:
            return
        path = self.root / METRICS_NAME
        if path.exists():  # appeared during the run
            raise FileExistsError(f"{path} appeared during the test run; not overwriting it")
        document = metrics_document(trainer.callback_metrics)
        write_json_atomic(path, document)
        self.written.append(path)
        table = metrics_table(document)
        if table:
            print(table)
        for label, written in {"metrics": path, **self.folders}.items():
            print(f"{label}: {written}")


def metrics_document(metrics: Mapping[str, Tensor | float]) -> dict[str, float | None]:
    """Metric name -> plain float, sorted by name; NaN and infinities become None (JSON has none)."""
    document: dict[str, float | None] = {}
    for name in sorted(metrics):
        value = metrics[name]
        number = float(value.item() if isinstance(value, Tensor) else value)
        document[name] = number if math.isfinite(number) else None
    return document


HEADLINE_METRICS = ("PQ", "AP", "mIoU", "cIoU", "visual_cIoU", "IR@1", "TR@1", "mIoU@1", "NoC@85")
"""Columns of :func:`metrics_table`, in order, where any dataset has them.

All but :data:`COUNT_METRICS` are fractions in [0, 1] (``findlit.metrics``: PQ over categories,
torchmetrics' mask mAP, semantic mIoU as a Jaccard index, grounding cIoU (of the text entities for an
interleave dataset, ``visual_cIoU`` of its visual ones) and per-sentence mean IoU, recall at 1,
interactive mIoU after one click), so the table shows percentages. ``mIoU`` is semantic
segmentation's for a segmentation dataset and the mean over sentences (or phrases) for grounding and
interleave datasets.
"""

COUNT_METRICS = frozenset({"NoC@85"})
"""Headline metrics that are counts (clicks to reach 85 % IoU), shown as they are, not in percent."""


def metrics_table(document: Mapping[str, float | None], stage: str = "test") -> str:
    """A plain-text table of the headline metrics: one row per dataset, values in percent.

    Args:
        document: ``<stage>/<dataset>/<metric>`` -> value, as :func:`metrics_document` gives.
        stage: the prefix of the names to read.

    Returns:
        The table's lines (title, header, rows), or "" when no dataset has a headline metric. A
        value in [0, 1] shows as a percentage with one decimal; any other (torchmetrics' -1 for mAP
        without ground truth) as it is; a count (:data:`COUNT_METRICS`) with two decimals; a
        missing metric as ``-``; a NaN (None) as ``nan``.

    """
    rows: dict[str, dict[str, float | None]] = {}
    for name, value in document.items():
        parts = name.split("/")
        if len(parts) == 3 and parts[0] == stage:
            rows.setdefault(parts[1], {})[parts[2]] = value
    columns = [m for m in HEADLINE_METRICS if any(m in metrics for metrics in rows.values())]
    if not columns:
        return ""
    cells = [["dataset", *columns]]
    cells += [[dataset, *(_cell(metrics, m) for m in columns)] for dataset, metrics in rows.items()]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    counts = [m for m in columns if m in COUNT_METRICS]
    lines = [f"{stage} metrics (%" + "".join(f"; {m} in clicks" for m in counts) + "):"]
    for row in cells:
        first = row[0].ljust(widths[0])
        lines.append(
            "  ".join([first, *(cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True))])
        )
    return "\n".join(lines)


def _cell(metrics: Mapping[str, float | None], name: str) -> str:
    if name not in metrics:
        return "-"
    value = metrics[name]
    if value is None:
        return "nan"
    if name in COUNT_METRICS:
        return f"{value:.2f}"
    return f"{100 * value:.1f}" if 0.0 <= value <= 1.0 else f"{value:g}"
