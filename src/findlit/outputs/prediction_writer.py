"""What ``findlit predict --config`` leaves behind: an overlay and a JSON of RLE masks per image.

:class:`PredictionWriter` is a Lightning :class:`~lightning.pytorch.callbacks.BasePredictionWriter`.
During ``trainer.predict`` it receives, batch by batch, the
:class:`~findlit.tasks.requests.Prediction` objects that
:meth:`FINDModule.predict_step <findlit.training.module.FINDModule.predict_step>` returns, and writes under
``<directory>`` (default: the run's folder, :func:`~findlit.outputs.test_results.run_directory`)::

    predictions/<name>/<stem>.png    the image with its masks, labels and scores
    predictions/<name>/<stem>.json   {image, height, width, masks: [{label, score, source,
                                      segmentation (COCO compressed RLE), area, bbox}]}

where ``<name>`` is the ``data.predict`` entry and ``<stem>`` the image's file name without suffix
(:meth:`Prediction.save <findlit.tasks.requests.Prediction.save>`). At the end it prints each
folder and how many images it holds.

Nothing is overwritten unless ``overwrite`` is true: before any image runs, rank 0 looks for the
outputs of every image of every entry, and the run stops, on every rank, naming what exists.

Under DDP each rank predicts and writes its own shard of the images (the DataModule's
``ShardedSampler``); their file names differ, so no rank waits for another.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L  # noqa: N812
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_warn

from findlit.outputs.overlay import output_paths
from findlit.outputs.test_results import PREDICTIONS_FOLDER, OutputExistsError, run_directory

_SHOWN = 5
"""How many existing outputs a refusal names (then how many more there are)."""


class PredictionWriter(BasePredictionWriter):
    """Write the overlay and RLE JSON of every image of a ``trainer.predict`` run.

    The run stops before predicting, with :class:`OutputExistsError` naming the files, when an output
    of one of its images exists (unless ``overwrite``).

    Args:
        enabled: False turns the callback off.
        directory: where to write (default: the run's folder); the outputs go to
            ``<directory>/predictions/<name>/``.
        overwrite: replace the outputs of earlier runs instead of refusing to start.

    """

    def __init__(self, enabled: bool = True, directory: str | None = None, overwrite: bool = False):
        super().__init__(write_interval="batch")
        self.enabled = enabled
        self.directory = directory
        self.overwrite = overwrite
        self.folders: dict[str, Path] = {}
        self.counts: dict[str, int] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Choose the folders and refuse, on every rank, to overwrite earlier outputs."""
        self.folders, self.counts = {}, {}
        if stage != "predict" or not self.enabled:
            return
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "predict_datasets"):
            rank_zero_warn("PredictionWriter: no MultiTaskDataModule, so no predictions are written")
            return
        root = Path(self.directory) if self.directory is not None else run_directory(trainer)
        datasets = datamodule.predict_datasets()  # the DataModule's setup listed them already
        self.folders = {dataset.name: root / PREDICTIONS_FOLDER / dataset.name for dataset in datasets}
        problem = None
        if not self.overwrite and trainer.is_global_zero:
            files = {name: dataset.files for name, dataset in zip(self.folders, datasets, strict=True)}
            problem = existing_outputs(self.folders, files)
        problem = trainer.strategy.broadcast(problem)
        if problem is not None:
            raise OutputExistsError(
                f"{problem}; findlit predict refuses to overwrite earlier predictions. Set "
                "prediction_writer.overwrite: true, choose another prediction_writer.directory, "
                "or move the old outputs away."
            )

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        """Save each image's overlay and JSON in its entry's folder."""
        folder = self.folders.get(batch["dataset"])
        if folder is None:
            return
        for image in prediction:
            image.save(folder, overwrite=self.overwrite)
        self.counts[batch["dataset"]] = self.counts.get(batch["dataset"], 0) + len(prediction)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Print each entry's folder and how many images every rank wrote into it (rank 0)."""
        if not self.folders:
            return
        counts = torch.tensor([self.counts.get(name, 0) for name in self.folders], dtype=torch.int64)
        if trainer.world_size > 1:
            counts = trainer.strategy.reduce(counts.to(pl_module.device), reduce_op="sum").cpu()
        if trainer.is_global_zero:
            for (name, folder), count in zip(self.folders.items(), counts.tolist(), strict=True):
                print(f"predictions of {name}: {count} images (overlay PNG + RLE JSON each) in {folder}")


def existing_outputs(folders: dict[str, Path], files: dict[str, Sequence[Path]]) -> str | None:
    """Which outputs of ``files`` (entry -> image files) exist in their ``folders``, or None."""
    existing = [
        str(path)
        for name, folder in folders.items()
        for image in files[name]
        for path in output_paths(image, folder)
        if path.exists()
    ]
    if not existing:
        return None
    more = f" and {len(existing) - _SHOWN} more" if len(existing) > _SHOWN else ""
    return f"outputs exist: {', '.join(existing[:_SHOWN])}{more}"
