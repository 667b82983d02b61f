"""FINDModule: the LightningModule that trains a FIND interface over frozen encoders.

The constructor's signature is the ``model`` section of a config. It builds the frozen vision and
text encoders (their weights stay outside the module tree: checkpoints hold their specs, see
:mod:`findlit.encoders.checkpoint`), a :class:`~findlit.encoders.PromptCache` over the text encoder,
the :class:`~findlit.interface.find.FINDInterface` and one :class:`~findlit.tasks.base.Task` per
task name. Each batch is routed to its task by ``batch["task"]``.

Optimisation follows FIND (X-Decoder's detectron2 solver): AdamW, lr 1e-4, weight decay 0.05 except
on norms, biases and embeddings (see :func:`parameter_groups`), a linear warmup then two steps down
by ``lr_gamma`` at ``lr_milestones`` of training (see :func:`lr_factor`), stepped per batch.
Gradient clipping is the Trainer's business: set ``trainer.gradient_clip_val`` (and
``gradient_clip_algorithm: norm``). FIND clips the full model's gradient norm; its configs set
``CLIP_VALUE: 5.0`` (to be checked against FIND's ``focalt_unicl_lang.yaml``; Mask2Former uses
0.01 with the same clip type).

Evaluation metrics per (stage, dataset), logged as ``<stage>/<dataset>/<metric>``: each evaluation
dataset's task builds them (:meth:`Task.build_metrics <findlit.tasks.base.Task.build_metrics>`) and
feeds them every batch (``update_metrics``); the module keeps them, clones them per stage, computes,
logs and resets them, and never names a task. Which task a name means, and which dataset formats
feed it, is :mod:`findlit.tasks.registry`'s; :func:`check_dataset_tasks` refuses a dataset whose task
is unknown, absent from the model, or not fed by its format, when the model meets the DataModule.

Prediction (``findlit predict --config``): :meth:`FINDModule.predict_step` gives, per image of a
``data.predict`` batch, the :class:`~findlit.tasks.requests.Prediction` that
:class:`~findlit.inference.predictor.Predictor` gives (both run
:func:`~findlit.tasks.requests.predict_batch`).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from functools import partial
from typing import Any, cast

import lightning as L  # noqa: N812
import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics import MeanMetric, MetricCollection

from findlit.data.collate import Batch
from findlit.data.config import DatasetConfig
from findlit.encoders.base import TextEncoder, VisionEncoder
from findlit.encoders.checkpoint import check_encoder_specs, record_encoder_specs
from findlit.encoders.prompt_cache import PromptCache
from findlit.encoders.registry import EncoderConfig
from findlit.errors import ConfigError
from findlit.interface.find import FINDInterface
from findlit.metrics import clone_for_stage
from findlit.tasks.base import EvaluatedDataset, Task, TaskContext, TaskMetrics, Vocabulary
from findlit.tasks.registry import task_class
from findlit.tasks.requests import Prediction, capability_problem, predict_batch
from findlit.training.model_options import (
    InterfaceOptions,
    interface_hparams,
    interface_kwargs,
    task_classes,
    task_kwargs,
)
from findlit.training.optimization import lr_factor, parameter_groups

VOCABULARY_KEY = "findlit_vocabularies"
"""Checkpoint key of the vocabularies (dataset name -> Vocabulary fields), for inference after loading."""

STAGES = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ()}


def _encoder_config(value: EncoderConfig | dict[str, Any]) -> EncoderConfig:
    """An EncoderConfig from itself or from its plain-dict form (as stored in hyperparameters)."""
    if isinstance(value, EncoderConfig):
        return value
    return EncoderConfig(str(value["name"]), dict(value.get("options") or {}))


def _task_options(name: str, options: dict[str, Any] | None, num_proposals: int) -> dict[str, Any]:
    """A task's kwargs, checked (``weights`` built); ``num_proposals`` defaults to the interface's."""
    kwargs = task_kwargs(name, options)
    if "num_proposals" in inspect.signature(task_classes()[name].__init__).parameters:
        kwargs.setdefault("num_proposals", num_proposals)
    return kwargs


def checkpoint_overrides(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments that rebuild, from a checkpoint's hyperparameters, the model it was saved as.

    An interleave task saved before its visual entities worked had text phrases only, and an
    interface without visual prompts unless another task asked for them: a checkpoint whose
    interleave options leave ``visual_prompt_p`` out while its interface has no visual prompts can
    only be one of those (a model saved since records ``visual_prompts: true`` whenever its
    interleave task draws visual entities). It is rebuilt with ``visual_prompt_p: 0``; the default
    0.5 would add the visual-prompt encoder that its weights lack.

    Returns:
        ``{}`` or ``{"task_options": ...}``, for ``FINDModule.load_from_checkpoint(path, **overrides)``.

    """
    interface = hparams.get("interface")
    tasks = hparams.get("tasks")
    options = dict(hparams.get("task_options") or {})
    interleave = dict(options.get("interleave") or {})
    visual = bool(interface.get("visual_prompts", False)) if isinstance(interface, Mapping) else True
    listed = tasks is None or "interleave" in tasks
    if visual or not listed or "visual_prompt_p" in interleave:
        return {}
    options["interleave"] = {**interleave, "visual_prompt_p": 0.0}
    return {"task_options": options}


def check_dataset_tasks(configs: Mapping[str, Sequence[DatasetConfig]], model_tasks: Sequence[str]) -> None:
    """Refuse a dataset whose task is unknown, not among the model's, or not fed by its format.

    Args:
        configs: split (``train``, ``val``, ``test``) -> its dataset configs (``data.<split>``).
        model_tasks: the model's task names (``model.tasks``).

    Raises:
        ConfigError: naming the dataset's key, e.g. ``data.train[0].task: unknown task 'depth'; ...``
            or ``data.val[1].format: '<format>' cannot feed task '<task>'; use one of [...]``.

    """
    for split, split_configs in configs.items():
        for index, config in enumerate(split_configs):
            key = f"data.{split}[{index}]"
            task = task_class(config.task, f"{key}.task")
            if config.format not in task.formats:
                raise ConfigError(
                    f"{key}.format: {config.format!r} cannot feed task {config.task!r}; "
                    f"use one of {sorted(task.formats)}"
                )
            if config.task not in model_tasks:
                raise ConfigError(
                    f"{key}.task: the model has no task {config.task!r}; model.tasks is {list(model_tasks)}"
                )


class FINDModule(L.LightningModule):
    """FIND interfaces over frozen encoders, trained on several tasks.

    Args:
        vision_encoder: the frozen image encoder (registry name and options).
        text_encoder: the frozen text encoder (registry name and options).
        interface: the options of :class:`~findlit.interface.find.FINDInterface` (all its arguments
            but ``in_channels`` and ``text_dim``; see
            :data:`~findlit.training.model_options.InterfaceOptions`); a dict of some of them is
            accepted too (checkpoint hyperparameters).
        tasks: the names of the tasks to build (:mod:`findlit.tasks.registry`; default: every
            registered task, but a task that reads visual prompts (the interactive one) only with
            ``interface.visual_prompts``; listing such a task builds the interface's visual-prompt
            encoder whatever ``interface.visual_prompts`` says).
        task_options: task name -> keyword arguments of its task class, checked against its
            signature (``weights`` as a dict of LossWeights fields); ``num_proposals`` defaults to
            the interface's.
        lr: AdamW base learning rate (FIND: 1e-4).
        weight_decay: AdamW weight decay of the decayed group (FIND: 0.05).
        warmup_steps: optimiser steps of linear warmup (FIND: 10).
        lr_milestones: fractions of the total optimiser steps where the learning rate is multiplied
            by ``lr_gamma`` (FIND: 0.889 and 0.963).
        lr_gamma: factor of each step down (FIND: 0.1).
        prompt_cache_size: most prompt strings whose text embeddings are kept in memory.

    """

    def __init__(
        self,
        vision_encoder: EncoderConfig = EncoderConfig("timm"),  # noqa: B008 (a config value)
        text_encoder: EncoderConfig = EncoderConfig("hf_text"),  # noqa: B008 (a config value)
        interface: InterfaceOptions = InterfaceOptions(),  # noqa: B008 (a frozen dataclass)
        tasks: list[str] | None = None,
        task_options: dict[str, dict[str, Any]] | None = None,
        lr: float = 1e-4,
        weight_decay: float = 0.05,
        warmup_steps: int = 10,
        lr_milestones: tuple[float, float] = (0.89, 0.96),
        lr_gamma: float = 0.1,
        prompt_cache_size: int = 100_000,
    ):
        super().__init__()
        vision_config = _encoder_config(vision_encoder)
        text_config = _encoder_config(text_encoder)
        known = task_classes()
        interface_options = interface_kwargs(interface)
        visual = bool(interface_options.get("visual_prompts", False))
        if tasks is None:
            tasks = [name for name, cls in known.items() if visual or not cls.needs_visual_prompts]
        tasks = list(tasks)
        unknown = sorted(set(tasks) - set(known))
        if unknown:
            raise ConfigError(f"model.tasks: unknown task(s) {unknown}; choose from {list(known)}")
        extra = sorted(set(task_options or {}) - set(tasks))
        if extra:
            raise ConfigError(f"model.task_options: options for task(s) {extra} that are not in model.tasks")
        default_proposals = inspect.signature(FINDInterface).parameters["num_proposals"].default
        num_proposals = int(interface_options.get("num_proposals", default_proposals))
        # the tasks are built before the interface, which must know whether they give visual prompts
        # (findlit's tasks draw no random parameter when built, so the interface's init is unchanged)
        built = {
            name: known[name](**_task_options(name, (task_options or {}).get(name), num_proposals))
            for name in tasks
        }
        if any(task.uses_visual_prompts for task in built.values()):
            # a task given visual prompts (the interactive one; the interleave one with visual entities)
            # needs the interface's visual-prompt encoder: listing the task is enough to build it (and
            # the hyperparameters record it)
            interface_options["visual_prompts"] = True
        # hyperparameters are plain data (checkpoints load with weights_only=True)
        self.save_hyperparameters(ignore=["vision_encoder", "text_encoder", "tasks", "interface"])
        self.hparams["vision_encoder"] = asdict(vision_config)
        self.hparams["text_encoder"] = asdict(text_config)
        self.hparams["interface"] = interface_hparams(interface_options)
        self.hparams["tasks"] = tasks
        self.hparams["lr_milestones"] = tuple(float(m) for m in lr_milestones)

        vision = vision_config.build("model.vision_encoder")
        text = text_config.build("model.text_encoder")
        if not isinstance(vision, VisionEncoder):
            raise ConfigError(f"model.vision_encoder: {vision_config.name!r} is not a vision encoder")
        if not isinstance(text, TextEncoder):
            raise ConfigError(f"model.text_encoder: {text_config.name!r} is not a text encoder")
        self.vision_encoder = vision
        self.text_encoder = text
        self.prompt_cache = PromptCache(text, max_entries=prompt_cache_size)
        self.interface = FINDInterface(
            in_channels=dict(vision.channels), text_dim=text.dim, **interface_options
        )
        self.tasks = nn.ModuleDict(built)
        self.vocabularies: dict[str, Vocabulary] = {}
        self.context = TaskContext(
            self.interface, self.prompt_cache, self.vocabularies, self.prompt_cache.sentences, self.features
        )
        # "<stage>/<dataset>" -> metrics; ModuleDict keys may not hold dots, hence the index
        self.metrics = nn.ModuleDict()
        # the same keys -> the dataset's mean evaluation loss. A torchmetrics mean (float sums, synced
        # at compute) and not self.log's: Lightning's synced mean truncates the batch count averaged
        # over ranks to an integer, which is wrong when unpadded shards give ranks different counts.
        self.eval_losses = nn.ModuleDict()
        self._metric_keys: dict[tuple[str, str], str] = {}

    # -- setup -----------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        """Check the datamodule's datasets, read their vocabularies, check cached features, build metrics.

        Every dataset of the stage must name a task of this model that its format feeds
        (:func:`check_dataset_tasks`). For ``predict``: check that this model serves every request
        of ``data.predict`` (each asked field needs a task that serves it), before any image runs.
        """
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None or not hasattr(datamodule, "stage_datasets"):
            return
        if stage == "predict" and hasattr(datamodule, "predict_datasets"):
            for index, dataset in enumerate(datamodule.predict_datasets()):
                problem = capability_problem(self, dataset.request)
                if problem is not None:
                    raise ConfigError(f"data.predict[{index}].{problem[0]}: {problem[1]}")
        splits = STAGES.get(stage, ())
        configs = getattr(datamodule, "configs", {})
        check_dataset_tasks({split: configs.get(split, []) for split in splits}, list(self.tasks))
        for split in splits:
            for dataset in datamodule.stage_datasets(split):
                self.vocabularies[dataset.name] = Vocabulary(
                    list(getattr(dataset, "class_names", [])),
                    list(getattr(dataset, "thing_classes", [])),
                    list(getattr(dataset, "category_ids", [])),
                )
        datamodule.check_feature_encoder(self.vision_encoder.spec)
        for split in splits:
            if split == "train":
                continue
            for dataset in datamodule.stage_datasets(split):
                self._build_metrics(split, dataset.name, dataset.task, getattr(dataset, "panoptic", None))

    def _build_metrics(self, split: str, dataset: str, task: str, panoptic: bool | None = None) -> None:
        """The mean loss and the task's metrics of one evaluation dataset, kept under ``self.metrics``.

        ``panoptic``: whether the dataset says its targets partition the image (None: it does not).
        A task without metrics gets the loss only.
        """
        if (split, dataset) in self._metric_keys or task not in self.tasks:
            return
        vocabulary = self.vocabularies.get(dataset, Vocabulary([], []))
        base = cast(Task, self.tasks[task]).build_metrics(EvaluatedDataset(dataset, vocabulary, panoptic))
        key = str(len(self._metric_keys))
        self._metric_keys[(split, dataset)] = key
        self.eval_losses[key] = MeanMetric()
        if base is not None:
            self.metrics[key] = _clone_for_stage(base, split, dataset)

    # -- steps -----------------------------------------------------------------------------------

    def features(self, batch: Batch) -> dict[str, Tensor]:
        """The frozen pyramid of a batch: its cached ``features`` as float, else the vision encoder's."""
        if "features" in batch:
            return {level: value.float() for level, value in batch["features"].items()}
        return cast(dict[str, Tensor], self.vision_encoder(batch["images"].float() / 255))

    def task(self, batch: Batch) -> Task:
        """The task of ``batch["task"]``."""
        name = batch["task"]
        if name not in self.tasks:
            raise KeyError(f"batch of task {name!r} but the model has tasks {list(self.tasks)}")
        return cast(Task, self.tasks[name])

    def forward(self, batch: Batch) -> Any:
        """Run the interface on a batch: its task's prompts over the batch's features and padding."""
        return self.task(batch).run(batch, self.features(batch), self.context)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """Loss of the batch's task; logs ``train/<task>/<term>`` and ``train/loss``."""
        task = self.task(batch)
        output = self(batch)
        total, terms = task.losses(output, batch, self.context)
        size = len(batch["image_ids"])
        for term, value in terms.items():
            self.log(f"train/{batch['task']}/{term}", value, batch_size=size)
        self.log("train/loss", total.detach(), batch_size=size, prog_bar=True)
        return total

    def validation_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Log ``val/<dataset>/loss`` and update the dataset's metrics."""
        self._evaluate(batch, "val")

    # Lightning types step outputs as a tensor or mapping; a list reaches the callbacks unchanged
    def test_step(  # type: ignore[override]
        self, batch: Batch, batch_idx: int, dataloader_idx: int = 0
    ) -> list[dict[str, Any]]:
        """Log ``test/<dataset>/loss``, update the dataset's metrics and return the predictions.

        The predictions (one dict per image, as the batch's task's ``predict`` gives them) reach
        callbacks' ``on_test_batch_end`` as ``outputs``, e.g. the writers of standard-format results.
        """
        return self._evaluate(batch, "test")

    def predict_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> list[Prediction]:
        """Per image of a ``data.predict`` batch, its masks for the batch's ``request``.

        Args:
            batch: a batch of :func:`~findlit.data.predict_dataset.collate_predict` (B images, with
                ``request``, and each image's ``file`` and ``pixels`` in ``targets``).
            batch_idx: index of the batch in its loader.
            dataloader_idx: index of the ``data.predict`` entry.

        Returns:
            B :class:`~findlit.tasks.requests.Prediction` (masks bool[N,H,W] at each image's
            size, on the CPU), as :meth:`Predictor.predict <findlit.inference.predictor.Predictor.predict>`
            gives them;
            callbacks get them as ``outputs`` (e.g. the writer of ``findlit predict``).

        """
        if "request" not in batch:
            raise ValueError(
                f"predict_step needs batches of data.predict (with a request), got a {batch['task']!r} batch"
            )
        return predict_batch(self, batch, batch["request"])

    def _evaluate(self, batch: Batch, split: str) -> list[dict[str, Any]]:
        task = self.task(batch)
        output = self(batch)
        total, _ = task.losses(output, batch, self.context)
        dataset = batch["dataset"]
        size = len(batch["image_ids"])
        key = self._metric_keys.get((split, dataset))
        if key is None:
            self.log(f"{split}/{dataset}/loss", total, batch_size=size, add_dataloader_idx=False)
        else:
            # logged as a Metric: its epoch value is the batch-size-weighted mean over every rank's shard
            loss = cast(MeanMetric, self.eval_losses[key])
            loss.update(total.detach(), size)
            self.log(f"{split}/{dataset}/loss", loss, add_dataloader_idx=False)
        predictions = task.predict(output, batch, self.context)
        if key is not None and key in self.metrics:
            self._update_metrics(self.metrics[key], batch, predictions)
        return predictions

    def _update_metrics(self, metrics: nn.Module, batch: Batch, predictions: list[dict[str, Any]]) -> None:
        """Feed one batch's predictions and targets to its dataset's metrics (by the batch's task)."""
        self.task(batch).update_metrics(cast(TaskMetrics, metrics), batch, predictions, self.context)

    def on_validation_epoch_end(self) -> None:
        """Compute, log and reset the validation metrics."""
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        """Compute, log and reset the test metrics."""
        self._log_metrics("test")

    def _log_metrics(self, split: str) -> None:
        for (stage, _), key in self._metric_keys.items():
            if stage != split or key not in self.metrics:
                continue
            metrics = self.metrics[key]
            values = cast(dict[str, Tensor], metrics.compute())  # type: ignore[operator]
            self.log_dict({k: v.float() for k, v in values.items()}, add_dataloader_idx=False)
            metrics.reset()  # type: ignore[operator]

    # -- checkpoints -----------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the encoder specs and the vocabularies (plain data)."""
        record_encoder_specs(checkpoint, self)
        checkpoint[VOCABULARY_KEY] = {name: asdict(v) for name, v in self.vocabularies.items()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of other encoders; restore the vocabularies."""
        check_encoder_specs(checkpoint, self)
        for name, fields in checkpoint.get(VOCABULARY_KEY, {}).items():
            self.vocabularies.setdefault(name, Vocabulary(**fields))

    # -- optimisation ----------------------------------------------------------------------------

    def configure_optimizers(self) -> Any:
        """AdamW over :func:`parameter_groups` and a per-step LambdaLR of :func:`lr_factor`."""
        groups = [
            {"params": group["params"], "weight_decay": group["weight_decay"]}
            for group in parameter_groups(self, self.hparams["weight_decay"])
            if group["params"]
        ]
        optimizer = torch.optim.AdamW(groups, lr=self.hparams["lr"])
        total = float(self.trainer.estimated_stepping_batches)
        schedule = partial(
            lr_factor,
            total_steps=total,
            warmup_steps=self.hparams["warmup_steps"],
            milestones=tuple(self.hparams["lr_milestones"]),
            gamma=self.hparams["lr_gamma"],
        )
        scheduler = LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _clone_for_stage(metrics: TaskMetrics, split: str, dataset: str) -> nn.Module:
    # clone_for_stage takes either kind, one at a time (a constrained type, not their union)
    if isinstance(metrics, MetricCollection):
        return clone_for_stage(metrics, split, dataset)
    return clone_for_stage(metrics, split, dataset)
