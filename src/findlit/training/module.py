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

Evaluation metrics per (stage, dataset), logged as ``<stage>/<dataset>/<metric>``:

- segmentation: semantic mIoU (from the ``semantic`` predictions, against a target painted from the
  masks and labels with ``ignore_mask`` pixels ignored); mask AP/AP50/AP75 of the ``instance``
  predictions against the thing segments (a target's ``iscrowd``, when it has one, marks crowd
  regions that COCO ignores); and, for a panoptic dataset only, PQ/SQ/RQ/PQ_th/PQ_st of the
  ``panoptic`` predictions against the segments, in the dataset's category ids, with unlabelled,
  ``ignore_mask`` and crowd pixels void (see :mod:`findlit.metrics.panoptic`). A dataset is panoptic
  when its ``panoptic`` attribute says so, else when its vocabulary has stuff classes: an instances
  file (things only, masks that may overlap) is no partition of the image, and gets AP and mIoU.
  Each part needs its prediction among the segmentation task's ``outputs``.
- grounding: cIoU, mIoU and P@0.5/0.7/0.9 of each sentence's predicted mask against its target mask.
- retrieval: IR@k / TR@k of the image query against every caption query over the whole dataset.
- interleave: the grounding metrics of each phrase against its referred segment and, when the task
  has its retrieval queries, the interleave retrieval recall IR@k / TR@k of each image's legend query
  (the whole interleaved prompt) against every image query of the dataset.

Prediction (``findlit predict --config``): :meth:`FINDModule.predict_step` gives, per image of a
``data.predict`` batch, the :class:`~findlit.inference.batch_prediction.Prediction` that
:class:`~findlit.inference.predictor.Predictor` gives (both run
:func:`~findlit.inference.batch_prediction.predict_batch`).
"""

from __future__ import annotations

import inspect
from dataclasses import asdict
from functools import partial
from typing import Any, cast

import lightning as L  # noqa: N812
import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics import MeanMetric

from findlit.data.collate import Batch, image_origin
from findlit.encoders.base import TextEncoder, VisionEncoder
from findlit.encoders.checkpoint import check_encoder_specs, record_encoder_specs
from findlit.encoders.prompt_cache import PromptCache
from findlit.encoders.registry import EncoderConfig
from findlit.errors import ConfigError
from findlit.inference.batch_prediction import Prediction, capability_problem, predict_batch
from findlit.interface.find import FINDInterface
from findlit.metrics import (
    GroundingMetrics,
    RetrievalRecall,
    SegmentationMetrics,
    clone_for_stage,
    grounding_metrics,
    instance_target,
    interleave_metrics,
    panoptic_prediction_map,
    panoptic_target_map,
    retrieval_metrics,
    segmentation_metrics,
)
from findlit.tasks.base import Task, TaskContext, Vocabulary
from findlit.tasks.grounding import GroundingTask
from findlit.tasks.interleave import InterleaveTask, phrases_of
from findlit.tasks.retrieval import RetrievalTask
from findlit.tasks.segmentation import SegmentationTask
from findlit.training.model_options import (
    InterfaceOptions,
    interface_hparams,
    interface_kwargs,
    task_classes,
    task_kwargs,
)
from findlit.training.optimization import lr_factor, parameter_groups

TASKS: dict[str, type[Task]] = {
    "segmentation": SegmentationTask,
    "grounding": GroundingTask,
    "retrieval": RetrievalTask,
    "interleave": InterleaveTask,
}
"""Task name (``batch["task"]``) -> task class."""

IGNORE_INDEX = 255
"""Semantic target value of unlabelled and ignored pixels."""

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


def semantic_target(target: dict[str, Any], padding_mask: Tensor, size: tuple[int, int]) -> Tensor:
    """int64[h,w] semantic target of one image from its padded ``masks``, ``labels`` and ``ignore_mask``.

    Cropped to the image (``size`` from its padding mask's origin); pixels of no mask or in
    ``ignore_mask`` are :data:`IGNORE_INDEX`.
    """
    top, left = image_origin(padding_mask)
    h, w = size
    masks = target["masks"][:, top : top + h, left : left + w]
    out = torch.full((h, w), IGNORE_INDEX, dtype=torch.int64, device=masks.device)
    for mask, label in zip(masks, target["labels"].tolist(), strict=True):
        out[mask] = int(label)
    if "ignore_mask" in target:
        out[target["ignore_mask"][top : top + h, left : left + w].to(out.device)] = IGNORE_INDEX
    return out


class FINDModule(L.LightningModule):
    """FIND interfaces over frozen encoders, trained on several tasks.

    Args:
        vision_encoder: the frozen image encoder (registry name and options).
        text_encoder: the frozen text encoder (registry name and options).
        interface: the options of :class:`~findlit.interface.find.FINDInterface` (all its arguments
            but ``in_channels`` and ``text_dim``; see
            :data:`~findlit.training.model_options.InterfaceOptions`); a dict of some of them is
            accepted too (checkpoint hyperparameters).
        tasks: the tasks to build, among ``segmentation``, ``grounding``, ``retrieval``,
            ``interleave`` (default: all four).
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
        tasks = list(known) if tasks is None else list(tasks)
        unknown = sorted(set(tasks) - set(known))
        if unknown:
            raise ConfigError(f"model.tasks: unknown task(s) {unknown}; choose from {list(known)}")
        extra = sorted(set(task_options or {}) - set(tasks))
        if extra:
            raise ConfigError(f"model.task_options: options for task(s) {extra} that are not in model.tasks")
        interface_options = interface_kwargs(interface)
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
        self.tasks = nn.ModuleDict(
            {
                name: known[name](
                    **_task_options(name, (task_options or {}).get(name), self.interface.num_proposals)
                )
                for name in tasks
            }
        )
        self.vocabularies: dict[str, Vocabulary] = {}
        self.context = TaskContext(
            self.interface, self.prompt_cache, self.vocabularies, self.prompt_cache.sentences
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
        """Read the datamodule's vocabularies, check its cached features, build the metrics.

        For ``predict``: check that this model serves every request of ``data.predict`` (prompts
        need the grounding task, class names the segmentation task), before any image runs.
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
        """Metrics of one evaluation dataset, kept under ``self.metrics`` (moved with the module).

        ``panoptic``: whether a segmentation dataset's targets are a panoptic partition (PQ is then
        computed); None decides by its vocabulary: panoptic when it has stuff classes.
        """
        if (split, dataset) in self._metric_keys or task not in self.tasks:
            return
        metrics: nn.Module
        if task == "segmentation":
            vocabulary = self.vocabularies[dataset]
            ids = vocabulary.category_ids or list(range(len(vocabulary.class_names)))
            things = [c for c, thing in zip(ids, vocabulary.thing_classes, strict=True) if thing]
            stuffs = [c for c, thing in zip(ids, vocabulary.thing_classes, strict=True) if not thing]
            if panoptic is None:
                panoptic = bool(stuffs)
            # PQ needs a partition of the image: an instances file (things only, masks may
            # overlap) gets mask AP and mIoU; each part only if the task predicts its input
            outputs = cast(SegmentationTask, self.tasks[task]).outputs
            wanted = {"PQ": "panoptic", "AP": "instance", "mIoU": "semantic"}
            include = [part for part, output in wanted.items() if output in outputs]
            if not panoptic:
                include = [part for part in include if part != "PQ"]
            base = segmentation_metrics(
                things, stuffs, len(vocabulary.class_names), include=include, ignore_index=IGNORE_INDEX
            )
            metrics = clone_for_stage(base, split, dataset)
        elif task == "retrieval":
            metrics = clone_for_stage(retrieval_metrics(), split, dataset)
        elif task == "interleave" and cast(InterleaveTask, self.tasks[task]).retrieval:
            metrics = clone_for_stage(interleave_metrics(), split, dataset)
        else:  # grounding; interleave without its retrieval queries
            metrics = clone_for_stage(grounding_metrics(), split, dataset)
        key = str(len(self._metric_keys))
        self._metric_keys[(split, dataset)] = key
        self.eval_losses[key] = MeanMetric()
        self.metrics[key] = metrics

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
        prompts = self.task(batch).prompts(batch, self.context)
        return self.interface(self.features(batch), prompts, batch["padding_mask"])

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
            B :class:`~findlit.inference.batch_prediction.Prediction` (masks bool[N,H,W] at each image's
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
        if key is not None:
            self._update_metrics(self.metrics[key], batch, predictions)
        return predictions

    def _update_metrics(self, metrics: nn.Module, batch: Batch, predictions: list[dict[str, Any]]) -> None:
        """Feed one batch's predictions and targets to its dataset's metrics."""
        name = batch["task"]
        targets = batch["targets"]
        if name == "segmentation":
            segmentation = cast(SegmentationMetrics, metrics)
            vocabulary = self.vocabularies[batch["dataset"]]
            category_ids = vocabulary.category_ids or list(range(len(vocabulary.class_names)))
            parts = set(segmentation.include)
            # one update per image: the images of a batch have their own sizes
            for b, (prediction, target) in enumerate(zip(predictions, targets, strict=True)):
                padding = batch["padding_mask"][b]
                h, w = (int(n) for n in batch["image_sizes"][b])
                top, left = image_origin(padding)
                masks = target["masks"][:, top : top + h, left : left + w]
                labels, crowd = target["labels"], target.get("iscrowd")
                update: dict[str, Any] = {}
                if "PQ" in parts:
                    segment_ids, segments = prediction["panoptic"]
                    ignore = target.get("ignore_mask")
                    ignore = ignore[top : top + h, left : left + w] if ignore is not None else None
                    pred = panoptic_prediction_map(segment_ids, segments, category_ids)
                    truth = panoptic_target_map(masks, labels, category_ids, ignore, crowd)
                    update["panoptic_pred"] = pred[None]
                    update["panoptic_target"] = truth.to(pred.device)[None]
                if "AP" in parts:
                    instances = prediction["instance"]
                    device = instances["masks"].device
                    truth_instances = instance_target(masks, labels, vocabulary.thing_classes, crowd)
                    update["instance_preds"] = [instances]
                    update["instance_targets"] = [{k: v.to(device) for k, v in truth_instances.items()}]
                if "mIoU" in parts:
                    semantic = prediction["semantic"]
                    truth = semantic_target(target, padding, (h, w))
                    update["semantic_pred"] = semantic[None]
                    update["semantic_target"] = truth.to(semantic.device)[None]
                segmentation.update(**update)
        elif name == "retrieval":
            recall = cast(RetrievalRecall, metrics["retrieval"])  # type: ignore[index]
            images = torch.stack([p["image_embedding"] for p in predictions])
            captions = [p["caption_embeddings"] for p in predictions]
            ids = torch.tensor(batch["image_ids"], device=images.device)
            counts = torch.tensor([len(c) for c in captions], device=images.device)
            recall.update(images, ids, torch.cat(captions), ids.repeat_interleave(counts))
        else:
            if "retrieval" in metrics and "legend_embedding" in predictions[0]:  # type: ignore[operator]
                # interleave retrieval: each image's legend query against every image query
                recall = cast(RetrievalRecall, metrics["retrieval"])  # type: ignore[index]
                images = torch.stack([p["image_embedding"] for p in predictions])
                legends = torch.stack([p["legend_embedding"] for p in predictions])
                ids = torch.tensor(batch["image_ids"], device=images.device)
                recall.update(images, ids, legends, ids)
            grounding = cast(GroundingMetrics, metrics["grounding"])  # type: ignore[index]
            for b, (prediction, target) in enumerate(zip(predictions, targets, strict=True)):
                if name == "grounding":
                    index = target["sentence_targets"]
                else:
                    index = torch.as_tensor(phrases_of(target)[1], dtype=torch.int64)
                masks = prediction["masks"]
                if masks.shape[0] == 0:
                    continue
                top, left = image_origin(batch["padding_mask"][b])
                h, w = masks.shape[-2:]
                truth = target["masks"][index.to(target["masks"].device)][:, top : top + h, left : left + w]
                grounding.update(masks, truth.to(masks.device))

    def on_validation_epoch_end(self) -> None:
        """Compute, log and reset the validation metrics."""
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        """Compute, log and reset the test metrics."""
        self._log_metrics("test")

    def _log_metrics(self, split: str) -> None:
        for (stage, _), key in self._metric_keys.items():
            if stage != split:
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
