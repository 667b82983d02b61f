"""The multi-task DataModule.

Interleaved task-homogeneous training batches, one loader per evaluation dataset, one loader per
set of images to predict on (``data.predict``), and a sampler position that checkpoints save and
restore.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import lightning as L  # noqa: N812
from lightning.fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from findlit.data.collate import collate_samples
from findlit.data.config import DatasetConfig, build_dataset
from findlit.data.datasets import TaskDataset
from findlit.data.errors import BadRecordPolicy
from findlit.data.predict_config import PredictConfig, check_predict_config, evaluation_resize
from findlit.data.predict_dataset import PredictDataset, build_predict_dataset, collate_predict
from findlit.data.sample import Sample
from findlit.data.sampler import MultiTaskBatchSampler, SampleKey, ShardedSampler
from findlit.encoders.spec import EncoderSpec
from findlit.errors import ConfigError


def init_worker(worker_id: int, rank: int) -> None:
    """A DataLoader worker's ``worker_init_fn``: ignore the requeue signals, then Lightning's seeding.

    SLURM sends its requeue signal (SIGUSR1 by default, SIGUSR2 at some sites) to every process of a
    job step, DataLoader workers included. A forked worker inherits the trainer's Python handler for
    it (Lightning's saves a checkpoint from the worker's stale copy of the trainer), and a spawned
    worker has the default action, which kills it and with it the training run. Ignoring the signal
    is right for both: the main process alone handles it. SIGTERM is left alone: PyTorch sets its
    own handler for it in every worker before this function runs, and SIGINT already ends a worker
    quietly (PyTorch catches the KeyboardInterrupt).

    Setting a ``worker_init_fn`` stops Lightning from adding its own, which seeds the workers'
    generators by rank when ``seed_everything(workers=True)`` was called (LightningCLI does), so this
    function calls that one the same way.
    """
    for name in ("SIGUSR1", "SIGUSR2"):
        if hasattr(signal, name):  # not on Windows
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    if int(os.environ.get("PL_SEED_WORKERS", "0")):
        pl_worker_init_function(worker_id, rank=rank)


class MultiTaskDataset(TorchDataset[Sample]):
    """Routes a :data:`SampleKey` ``(dataset, index, seed)`` to the right task dataset."""

    def __init__(self, datasets: Sequence[TaskDataset]):
        self.datasets = list(datasets)

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets)

    def __getitem__(self, key: SampleKey) -> Sample:
        dataset, index, seed = key
        return self.datasets[dataset][(index, seed)]


class ResumableDataLoader(DataLoader[Sample]):
    """A training DataLoader that Lightning saves and restores with the fit loop.

    Lightning treats a loader with ``state_dict`` / ``load_state_dict`` as resumable: a run resumed
    from a mid-epoch checkpoint continues that epoch instead of starting it again. The position
    is the DataModule's count of batches that reached the model, not of batches prefetched.
    """

    def __init__(self, *args: Any, datamodule: MultiTaskDataModule, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._datamodule = datamodule

    def state_dict(self) -> dict[str, Any]:
        """The training position (see :meth:`MultiTaskDataModule.state_dict`)."""
        return self._datamodule.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue after the saved position on the next iteration."""
        self._datamodule.load_state_dict(state_dict)
        assert isinstance(self.batch_sampler, MultiTaskBatchSampler)
        self.batch_sampler.load_state_dict(state_dict)
        self._datamodule._resume = None


class MultiTaskDataModule(L.LightningDataModule):
    """Datasets of several tasks for training, validation and test, and images to predict on.

    Args:
        train: training datasets; batches are drawn from them by their ``ratio``.
        val: validation datasets; one loader each, in this order.
        test: test datasets; one loader each, in this order.
        predict: sets of image files with what to predict on them (``findlit predict --config``);
            one loader each, in this order.
        root: folder that relative paths in ``paths`` are taken from (default: working directory).
        num_workers: DataLoader worker processes per loader.
        seed: seed of the task sequence and of every sample's augmentation.
        steps_per_epoch: training batches per epoch (default: each dataset seen about once).
        on_bad_record: ``error`` stops at the first bad record; ``skip`` drops it with one warning
            per dataset.
        size_divisibility: batches are padded to a multiple of this (the encoder's largest stride).
        pin_memory: pin batches for faster host-to-GPU copies.

    """

    def __init__(
        self,
        train: list[DatasetConfig] | None = None,
        val: list[DatasetConfig] | None = None,
        test: list[DatasetConfig] | None = None,
        predict: list[PredictConfig] | None = None,
        root: str | None = None,
        num_workers: int = 2,
        seed: int = 0,
        steps_per_epoch: int | None = None,
        on_bad_record: BadRecordPolicy = "error",
        size_divisibility: int = 32,
        pin_memory: bool = False,
    ):
        super().__init__()
        self.configs = {"train": list(train or []), "val": list(val or []), "test": list(test or [])}
        # kept apart from ``configs`` (what ``findlit data check`` reads): they have no annotations
        self.predict_configs = list(predict or [])
        for index, config in enumerate(self.predict_configs):
            check_predict_config(config, f"data.predict[{index}]")  # no file needed: before any run
        names_of = {stage: [c.name for c in configs] for stage, configs in self.configs.items()}
        names_of["predict"] = [c.name for c in self.predict_configs]
        for stage, names in names_of.items():
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise ConfigError(f"data.{stage}: dataset names must be unique, repeated: {duplicates}")
        if on_bad_record not in ("error", "skip"):
            raise ConfigError(f"data.on_bad_record must be 'error' or 'skip', got {on_bad_record!r}")
        if num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {num_workers}")
        self.root = root
        self.num_workers = num_workers
        self.seed = seed
        self.steps_per_epoch = steps_per_epoch
        self.on_bad_record: BadRecordPolicy = on_bad_record
        self.size_divisibility = size_divisibility
        self.pin_memory = pin_memory
        self.datasets: dict[str, list[TaskDataset]] = {}
        self._predict_datasets: list[PredictDataset] | None = None
        self.train_sampler: MultiTaskBatchSampler | None = None
        # Position of the training loop: batches that reached the model in the current epoch.
        self._epoch = 0
        self._consumed = 0
        self._resume: dict[str, Any] | None = None

    def stage_datasets(self, stage: str) -> list[TaskDataset]:
        """The datasets of ``stage`` (``train``, ``val`` or ``test``), read on first use."""
        if stage not in self.datasets:
            self.datasets[stage] = [
                build_dataset(
                    config,
                    f"data.{stage}[{i}]",
                    train=stage == "train",
                    root=self.root,
                    on_bad_record=self.on_bad_record,
                    size_divisibility=self.size_divisibility,
                )
                for i, config in enumerate(self.configs[stage])
            ]
        return self.datasets[stage]

    def predict_datasets(self) -> list[PredictDataset]:
        """The datasets of ``data.predict``, their image files listed and checked on first use.

        An entry without ``image_size`` resizes as the first test, val or train dataset does.

        Raises:
            ConfigError: naming the entry's key: a missing file or folder, a folder without images,
                two images of one stem.

        """
        if self._predict_datasets is None:
            default_resize = evaluation_resize(self.configs)
            self._predict_datasets = [
                build_predict_dataset(config, f"data.predict[{i}]", self.root, default_resize)
                for i, config in enumerate(self.predict_configs)
            ]
        return self._predict_datasets

    def setup(self, stage: str) -> None:
        """Read the annotation files the Lightning ``stage`` needs."""
        trainer = self.trainer
        # Lightning cannot put its DistributedSampler into our batch sampler, and would pad the
        # evaluation shards; this DataModule shards by rank itself.
        if (
            trainer is not None
            and trainer.world_size > 1
            and trainer._accelerator_connector.use_distributed_sampler
        ):
            raise ConfigError(
                "trainer.use_distributed_sampler must be false with MultiTaskDataModule, "
                "which shards by rank itself"
            )
        if stage == "predict":
            if not self.predict_configs:
                raise ConfigError("data.predict: predicting needs at least one entry (images and prompts)")
            self.predict_datasets()
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage, ())
        for split in wanted:
            if split == "train" and not self.configs["train"]:
                raise ConfigError("data.train: fitting needs at least one training dataset")
            self.stage_datasets(split)

    def check_feature_encoder(self, spec: EncoderSpec) -> None:
        """Require the datasets read so far from a feature cache to have been cached by encoder ``spec``.

        The DataModule checks preprocessing and records against each cache but does not know the
        model's vision encoder: the model calls this (after ``setup``) with its encoder's spec.

        Raises:
            StaleCacheError: naming the dataset's ``features`` key and the differing spec fields.

        """
        for stage, datasets in self.datasets.items():
            for index, dataset in enumerate(datasets):
                if dataset.features is not None:
                    dataset.features.check_encoder(spec, f"data.{stage}[{index}].features")

    def names(self, stage: str) -> list[str]:
        """Dataset names of ``stage`` (or ``predict``) in loader order (``dataloader_idx`` -> name)."""
        configs = self.predict_configs if stage == "predict" else self.configs[stage]
        return [config.name for config in configs]

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def train_dataloader(self) -> ResumableDataLoader:
        """Task-homogeneous batches interleaved by ratio; this rank's share of every global batch."""
        datasets = self.stage_datasets("train")
        rank, world_size = self._rank_and_world()
        sampler = MultiTaskBatchSampler(
            [len(d) for d in datasets],
            [c.batch_size for c in self.configs["train"]],
            [c.ratio for c in self.configs["train"]],
            steps_per_epoch=self.steps_per_epoch,
            seed=self.seed,
            rank=rank,
            world_size=world_size,
        )
        if self._resume is not None:
            sampler.load_state_dict(self._resume)
            self._resume = None
        self.train_sampler = sampler
        return ResumableDataLoader(
            MultiTaskDataset(datasets),
            datamodule=self,
            batch_sampler=sampler,
            collate_fn=partial(collate_samples, size_divisibility=self.size_divisibility),
            num_workers=self.num_workers,
            worker_init_fn=partial(init_worker, rank=rank),
            pin_memory=self.pin_memory,
            persistent_workers=False,
        )

    def _sharded_loader(
        self, dataset: TaskDataset | PredictDataset, batch_size: int, collate_fn: Callable[[list[Any]], Any]
    ) -> DataLoader[Any]:
        """A loader of this rank's share of ``dataset`` (unpadded shards, in order)."""
        rank, world_size = self._rank_and_world()
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=ShardedSampler(len(dataset), rank, world_size),
            collate_fn=collate_fn,
            num_workers=self.num_workers,
            worker_init_fn=partial(init_worker, rank=rank),
            pin_memory=self.pin_memory,
        )

    def _eval_loaders(self, stage: str) -> list[DataLoader[Sample]]:
        collate = partial(collate_samples, size_divisibility=self.size_divisibility)
        return [
            self._sharded_loader(dataset, config.batch_size, collate)
            for dataset, config in zip(self.stage_datasets(stage), self.configs[stage], strict=True)
        ]

    def val_dataloader(self) -> list[DataLoader[Sample]]:
        """One loader per validation dataset, in config order (see :meth:`names`)."""
        return self._eval_loaders("val")

    def test_dataloader(self) -> list[DataLoader[Sample]]:
        """One loader per test dataset, in config order (see :meth:`names`)."""
        return self._eval_loaders("test")

    def predict_dataloader(self) -> list[DataLoader[Sample]]:
        """One loader per ``data.predict`` entry, in config order; this rank's share of its images.

        Batches (:func:`~findlit.data.predict_dataset.collate_predict`) carry the entry's request.
        """
        return [
            self._sharded_loader(
                dataset,
                config.batch_size,
                partial(collate_predict, request=dataset.request, size_divisibility=self.size_divisibility),
            )
            for dataset, config in zip(self.predict_datasets(), self.predict_configs, strict=True)
        ]

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Count training batches as they reach the model (the loader may prefetch further)."""
        trainer = self.trainer
        if trainer is not None and trainer.training and self.train_sampler is not None:
            if self.train_sampler.epoch != self._epoch:
                self._epoch, self._consumed = self.train_sampler.epoch, self.train_sampler.start_step
            self._consumed += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        """The training position: seed, epoch and batches consumed in it."""
        return {"seed": self.seed, "epoch": self._epoch, "step": self._consumed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume: the next training loader continues right after the saved position."""
        self._epoch, self._consumed = int(state_dict["epoch"]), int(state_dict["step"])
        self._resume = dict(state_dict)
