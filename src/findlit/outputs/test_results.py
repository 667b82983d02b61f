"""What ``findlit test`` leaves behind: ``metrics.json`` and the predictions in standard formats.

:class:`TestResultsWriter` is a Lightning callback. During ``trainer.test`` it receives the
predictions that :meth:`FINDModule.test_step <findlit.training.module.FINDModule.test_step>` returns and
writes, under ``<directory>`` (default: the run's folder, :func:`run_directory`)::

    metrics.json                                 every metric of the test run, name -> float
    predictions/<dataset>/panoptic/<stem>.png    segmentation: COCO panoptic PNGs ...
    predictions/<dataset>/panoptic_predictions.json  ... and their JSON (panopticapi's pq_compute)
    predictions/<dataset>/instances_results.json segmentation: COCO results, RLE masks (COCO.loadRes)
    predictions/<dataset>/grounding_results.json grounding: one entry per sentence, with ref ids
    predictions/<dataset>/retrieval_results.json retrieval: ranked galleries of every query
    predictions/<dataset>/retrieval_captions.json retrieval: the caption ids used above
    overlays/<dataset>/<stem>.png                the first ``overlays`` images: masks, labels, scores

At the end it prints a table of the headline metrics, one row per dataset (:func:`metrics_table`),
and the paths above; Lightning's own table of every metric follows it.

Masks are resized from the transformed image size to the size on disk with nearest-neighbour
sampling of the binary masks (and of the panoptic id map); the evaluation transform only resizes
(no crop), so this maps every pixel back. Interleave predictions have no standard format and are
not written.

Overlays (:mod:`findlit.outputs.overlays_sink`) are drawn at the image's size on disk, for every
dataset but retrieval ones, and logged to W&B when a ``WandbLogger`` is among the trainer's loggers
(key ``test/<dataset>/overlays``).

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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L  # noqa: N812
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from findlit.errors import OutputError
from findlit.outputs.coco_writers import (
    GroundingResultsWriter,
    InstanceResultsWriter,
    PanopticWriter,
    RetrievalResultsWriter,
    write_json_atomic,
)
from findlit.outputs.overlays_sink import OVERLAYS_FOLDER, OverlaySink, log_overlays_to_wandb

METRICS_NAME = "metrics.json"
"""File name of the metrics, in the results directory."""

PREDICTIONS_FOLDER = "predictions"
"""Folder of the predictions (one subfolder per test dataset), in the results directory."""

INSTANCES_NAME = "instances_results.json"
GROUNDING_NAME = "grounding_results.json"
RETRIEVAL_NAME = "retrieval_results.json"
CAPTIONS_NAME = "retrieval_captions.json"


def resize_nearest(values: Tensor, size: Sequence[int]) -> Tensor:
    """Nearest-neighbour resize of the last two dims of ``values`` [..., h, w] to ``size`` (H, W).

    Indexes rather than interpolates, so any dtype (bool masks, int64 segment ids) keeps its exact
    values; the source pixel of output (i, j) is ``(floor(i * h / H), floor(j * w / W))``, as
    ``F.interpolate(mode="nearest")`` picks it.
    """
    height, width = int(size[0]), int(size[1])
    h, w = int(values.shape[-2]), int(values.shape[-1])
    if (h, w) == (height, width):
        return values
    rows = torch.div(torch.arange(height, device=values.device) * h, height, rounding_mode="floor")
    cols = torch.div(torch.arange(width, device=values.device) * w, width, rounding_mode="floor")
    return values[..., rows[:, None], cols[None, :]]


def category_ids_of(vocabulary: Any) -> list[int]:
    """Class index -> dataset category id of a :class:`~findlit.tasks.base.Vocabulary`.

    A vocabulary without category ids (a dataset without categories) maps each index to itself.
    """
    ids = list(getattr(vocabulary, "category_ids", []) or [])
    return ids or list(range(len(getattr(vocabulary, "class_names", []))))


def _records_by_image(dataset: Any) -> dict[int, Any]:
    return {int(record.image.id): record for record in getattr(dataset, "records", ())}


class _Sink:
    """Predictions of one test dataset: fed per batch, written once by rank 0.

    ``payload`` is what this rank contributes (picklable, on the CPU); ``finish`` gets every rank's
    payload, in rank order, and writes the files.
    """

    def add(self, predictions: Sequence[Mapping[str, Any]], batch: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def payload(self) -> Any:
        raise NotImplementedError

    def finish(self, payloads: Sequence[Any]) -> list[Path]:
        raise NotImplementedError


class SegmentationSink(_Sink):
    """COCO panoptic PNGs + JSON and COCO instance results of a segmentation dataset.

    Args:
        folder: the dataset's prediction folder.
        dataset: the test dataset (``categories`` and ``records`` give names and file names).
        category_ids: class index -> category id (the model's vocabulary of this dataset).
        overwrite: passed to the writers (only under DDP, after rank 0 checked the folder).

    """

    def __init__(self, folder: Path, dataset: Any, category_ids: Sequence[int], *, overwrite: bool = False):
        self.category_ids = list(category_ids)
        self.file_names = {i: r.image.path.name for i, r in _records_by_image(dataset).items()}
        self.panoptic = PanopticWriter(folder, dataset.categories, overwrite=overwrite)
        self.instances = InstanceResultsWriter(folder / INSTANCES_NAME, overwrite=overwrite)
        self.kinds: set[str] = set()

    def add(self, predictions: Sequence[Mapping[str, Any]], batch: Mapping[str, Any]) -> None:
        """Write each image's panoptic PNG and keep its instance results, at the size on disk."""
        for b, prediction in enumerate(predictions):
            image_id = int(batch["image_ids"][b])
            size = batch["orig_sizes"][b]
            if "panoptic" in prediction:
                self.kinds.add("panoptic")
                segment_ids, segments = prediction["panoptic"]
                self.panoptic.add(
                    image_id,
                    self.file_names.get(image_id, f"{image_id:012d}.jpg"),
                    resize_nearest(segment_ids, size).cpu(),
                    [
                        {
                            "id": int(s["id"]),
                            "category_id": self.category_ids[int(s["category"])],
                            "score": float(s["score"]),
                        }
                        for s in segments
                    ],
                )
            if "instance" in prediction:
                self.kinds.add("instance")
                instance = prediction["instance"]
                labels = instance["labels"].tolist()
                self.instances.add(
                    image_id,
                    resize_nearest(instance["masks"], size).cpu(),
                    [self.category_ids[int(label)] for label in labels],
                    instance["scores"].float().cpu(),
                )

    def payload(self) -> Any:
        """(kinds, panoptic annotations, panoptic images, instance entries) of this rank."""
        return self.kinds, self.panoptic.annotations, self.panoptic.images, self.instances.entries

    def finish(self, payloads: Sequence[Any]) -> list[Path]:
        """Write the JSONs of the kinds any rank predicted; entries sorted by image id."""
        kinds = set().union(*(p[0] for p in payloads))
        written = []
        if "panoptic" in kinds:
            self.panoptic.annotations = _by_image([a for p in payloads for a in p[1]], "image_id")
            self.panoptic.images = _by_image([i for p in payloads for i in p[2]], "id")
            written.append(self.panoptic.close())
        if "instance" in kinds:
            self.instances.entries = _by_image([e for p in payloads for e in p[3]], "image_id")
            written.append(self.instances.close())
        return written


class GroundingSink(_Sink):
    """Referring segmentation results of a grounding dataset, one entry per sentence.

    Each sentence's ``ref_id`` comes from the dataset's record of the image (the sample's
    ``sentence_targets`` index its refs, in record order); ``sentence_id`` is the sentence's
    position within its ref (the records keep no RefCOCO ``sent_id``).
    """

    def __init__(self, folder: Path, dataset: Any, *, overwrite: bool = False):
        self.records = _records_by_image(dataset)
        self.writer = GroundingResultsWriter(folder / GROUNDING_NAME, overwrite=overwrite)

    def add(self, predictions: Sequence[Mapping[str, Any]], batch: Mapping[str, Any]) -> None:
        """Add every sentence's mask, resized to the image's size on disk."""
        for b, prediction in enumerate(predictions):
            image_id = int(batch["image_ids"][b])
            refs = self.records[image_id].refs
            targets = batch["targets"][b]["sentence_targets"].tolist()
            masks = resize_nearest(prediction["masks"], batch["orig_sizes"][b]).cpu()
            scores = prediction["scores"].float().cpu().tolist()
            seen: dict[int, int] = {}
            for s, sentence in enumerate(prediction["sentences"]):
                ref = refs[targets[s]]
                position = seen[targets[s]] = seen.get(targets[s], -1) + 1
                self.writer.add(image_id, ref.ref_id, sentence, masks[s], scores[s], sentence_id=position)

    def payload(self) -> Any:
        """This rank's entries."""
        return self.writer.entries

    def finish(self, payloads: Sequence[Any]) -> list[Path]:
        """Write every rank's entries, sorted by image id."""
        self.writer.entries = _by_image([e for p in payloads for e in p], "image_id")
        return [self.writer.close()]


class RetrievalSink(_Sink):
    """Ranked galleries of a retrieval dataset, and the captions behind its caption ids.

    The records keep no caption ids, so captions are numbered in dataset order (record by record,
    caption by caption, from 0); ``retrieval_captions.json`` lists ``{id, image_id, caption}`` for
    each caption evaluated. Every image query ranks all captions and every caption query ranks all
    images (over every rank), cut to ``top_k``.
    """

    def __init__(self, folder: Path, dataset: Any, top_k: int | None, *, overwrite: bool = False):
        self.captions_path = folder / CAPTIONS_NAME
        if self.captions_path.exists() and not overwrite:
            raise FileExistsError(f"{self.captions_path} exists")
        self.writer = RetrievalResultsWriter(folder / RETRIEVAL_NAME, top_k=top_k, overwrite=overwrite)
        self.caption_ids: dict[int, list[int]] = {}
        self.caption_texts: dict[int, tuple[str, ...]] = {}
        first = 0
        for image_id, record in _records_by_image(dataset).items():
            self.caption_ids[image_id] = list(range(first, first + len(record.captions)))
            self.caption_texts[image_id] = tuple(record.captions)
            first += len(record.captions)
        self.images: list[tuple[int, Tensor]] = []
        self.captions: list[tuple[int, int, Tensor]] = []

    def add(self, predictions: Sequence[Mapping[str, Any]], batch: Mapping[str, Any]) -> None:
        """Keep each image's embedding float[E] and its captions' float[c,E] (on the CPU)."""
        for b, prediction in enumerate(predictions):
            image_id = int(batch["image_ids"][b])
            ids = self.caption_ids[image_id]
            embeddings = prediction["caption_embeddings"].float().cpu()
            if len(embeddings) != len(ids):
                raise ValueError(
                    f"image_id={image_id}: {len(embeddings)} caption embeddings for {len(ids)} captions"
                )
            self.images.append((image_id, prediction["image_embedding"].float().cpu()))
            self.captions.extend((ids[k], image_id, embeddings[k]) for k in range(len(ids)))

    def payload(self) -> Any:
        """This rank's image and caption embeddings."""
        return self.images, self.captions

    def finish(self, payloads: Sequence[Any]) -> list[Path]:
        """Rank the galleries; write the results and the captions file."""
        images = sorted((i for p in payloads for i in p[0]), key=lambda item: item[0])
        captions = sorted((c for p in payloads for c in p[1]), key=lambda item: item[0])
        if images and captions:
            image_ids = torch.tensor([i for i, _ in images])
            caption_ids = torch.tensor([c for c, _, _ in captions])
            image_matrix = torch.stack([e for _, e in images])  # [I,E]
            caption_matrix = torch.stack([e for _, _, e in captions])  # [C,E]
            self._rank("image", image_ids, image_matrix, caption_ids, caption_matrix)
            self._rank("text", caption_ids, caption_matrix, image_ids, image_matrix)
        gallery = [
            {"id": c, "image_id": i, "caption": self.caption_texts[i][self.caption_ids[i].index(c)]}
            for c, i, _ in captions
        ]
        write_json_atomic(self.captions_path, gallery)
        return [self.writer.close(), self.captions_path]

    def _rank(
        self,
        kind: Literal["image", "text"],
        query_ids: Tensor,
        queries: Tensor,
        gallery_ids: Tensor,
        gallery: Tensor,
        chunk: int = 1024,
    ) -> None:
        """Add the top-k gallery of each query; similarities in chunks of ``chunk`` queries."""
        k = len(gallery_ids) if self.writer.top_k is None else min(self.writer.top_k, len(gallery_ids))
        for start in range(0, len(queries), chunk):
            scores, index = (queries[start : start + chunk] @ gallery.T).topk(k, dim=1)
            for row in range(len(scores)):
                self.writer.add(kind, int(query_ids[start + row]), gallery_ids[index[row]], scores[row])


def _by_image(entries: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    # a stable sort: one image's entries keep their order (e.g. instance results by score)
    return sorted(entries, key=lambda entry: int(entry[key]))


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


class OutputExistsError(OutputError, FileExistsError):
    """A run would overwrite the outputs of an earlier one; raised before it starts, naming them.

    An :class:`~findlit.errors.OutputError` (not any :class:`FileExistsError`) so that the ``findlit``
    command reports it as the user's to resolve, while a file clash from a bug keeps its traceback.
    """


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
        self.sinks: dict[str, _Sink] = {}
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
        if self.overlays and trainer.is_global_zero:
            for dataset in datamodule.stage_datasets("test"):
                if dataset.task != "retrieval":
                    names = getattr(vocabularies.get(dataset.name, dataset), "class_names", [])
                    folder = self.root / OVERLAYS_FOLDER / dataset.name
                    self.overlay_sinks[dataset.name] = OverlaySink(folder, dataset, names, self.overlays)
        if not self.predictions:
            return
        overwrite = trainer.world_size > 1  # rank 0 checked the folder in setup; ranks share it
        for dataset in datamodule.stage_datasets("test"):
            folder = self.root / PREDICTIONS_FOLDER / dataset.name
            if dataset.task == "segmentation":
                ids = category_ids_of(vocabularies.get(dataset.name, dataset))
                self.sinks[dataset.name] = SegmentationSink(folder, dataset, ids, overwrite=overwrite)
            elif dataset.task == "grounding":
                self.sinks[dataset.name] = GroundingSink(folder, dataset, overwrite=overwrite)
            elif dataset.task == "retrieval":
                self.sinks[dataset.name] = RetrievalSink(
                    folder, dataset, self.retrieval_top_k, overwrite=overwrite
                )
            # interleave: no standard format

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


HEADLINE_METRICS = ("PQ", "AP", "mIoU", "cIoU", "IR@1", "TR@1")
"""Columns of :func:`metrics_table`, in order, where any dataset has them.

Every one is a fraction in [0, 1] (``findlit.metrics``: PQ over categories, torchmetrics' mask mAP,
semantic mIoU as a Jaccard index, grounding cIoU and per-sentence mean IoU, recall at 1), so the
table shows percentages. ``mIoU`` is semantic segmentation's for a segmentation dataset and the
mean over sentences (or phrases) for grounding and interleave datasets.
"""


def metrics_table(document: Mapping[str, float | None], stage: str = "test") -> str:
    """A plain-text table of the headline metrics: one row per dataset, values in percent.

    Args:
        document: ``<stage>/<dataset>/<metric>`` -> value, as :func:`metrics_document` gives.
        stage: the prefix of the names to read.

    Returns:
        The table's lines (title, header, rows), or "" when no dataset has a headline metric. A
        value in [0, 1] shows as a percentage with one decimal; any other (torchmetrics' -1 for mAP
        without ground truth) as it is; a missing metric as ``-``; a NaN (None) as ``nan``.

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
    cells += [[dataset, *(_percent(metrics, m) for m in columns)] for dataset, metrics in rows.items()]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines = [f"{stage} metrics (%):"]
    for row in cells:
        first = row[0].ljust(widths[0])
        lines.append(
            "  ".join([first, *(cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True))])
        )
    return "\n".join(lines)


def _percent(metrics: Mapping[str, float | None], name: str) -> str:
    if name not in metrics:
        return "-"
    value = metrics[name]
    if value is None:
        return "nan"
    return f"{100 * value:.1f}" if 0.0 <= value <= 1.0 else f"{value:g}"
