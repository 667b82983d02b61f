"""Evaluation of the segmentation task: PQ, mask AP and semantic mIoU of one dataset.

- semantic mIoU of the ``semantic`` predictions, against a target painted from the masks and labels
  (:func:`semantic_map`) with ``ignore_mask`` pixels ignored;
- mask AP/AP50/AP75 of the ``instance`` predictions against the thing segments (a target's
  ``iscrowd``, when it has one, marks crowd regions that COCO ignores);
- for a panoptic dataset only, PQ/SQ/RQ/PQ_th/PQ_st of the ``panoptic`` predictions against the
  segments, in the dataset's category ids, with unlabelled, ``ignore_mask`` and crowd pixels void
  (see :mod:`findlit.metrics.panoptic`). A dataset is panoptic when it says so (its ``panoptic``
  attribute), else when its vocabulary has stuff classes: an instances file (things only, masks
  that may overlap) is no partition of the image, and gets AP and mIoU.

Each part needs its prediction among the segmentation task's ``outputs``. Every part is scored at
each image's size on disk when the batch carries the decoded targets (``original``, as evaluation
datasets give): the predictions are resized there exactly as the written result files are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from findlit.data.collate import Batch, image_targets
from findlit.metrics import (
    SegmentationMetrics,
    instance_target,
    panoptic_prediction_map,
    panoptic_target_map,
    segmentation_metrics,
)
from findlit.nearest_resize import resize_nearest
from findlit.tasks.base import EvaluatedDataset, Vocabulary

IGNORE_INDEX = 255
"""Semantic target value of unlabelled and ignored pixels."""

PARTS = {"PQ": "panoptic", "AP": "instance", "mIoU": "semantic"}
"""Metric part -> the prediction it reads."""


def semantic_map(masks: Tensor, labels: Tensor, ignore_mask: Tensor | None = None) -> Tensor:
    """int64[H,W] semantic target of one image from its ``masks`` bool[N,H,W] and ``labels`` int64[N].

    Pixels of no mask or in ``ignore_mask`` (bool[H,W]) are :data:`IGNORE_INDEX`.
    """
    out = torch.full(masks.shape[-2:], IGNORE_INDEX, dtype=torch.int64, device=masks.device)
    for mask, label in zip(masks, labels.tolist(), strict=True):
        out[mask] = int(label)
    if ignore_mask is not None:
        out[ignore_mask.to(out.device)] = IGNORE_INDEX
    return out


def category_ids(vocabulary: Vocabulary) -> list[int]:
    """Class index -> category id (the index itself for a vocabulary without category ids)."""
    return vocabulary.category_ids or list(range(len(vocabulary.class_names)))


def build_segmentation_metrics(dataset: EvaluatedDataset, outputs: Sequence[str]) -> SegmentationMetrics:
    """The parts of :func:`~findlit.metrics.segmentation_metrics` that ``dataset`` and ``outputs`` allow.

    ``dataset.panoptic`` None decides by the vocabulary: panoptic when it has stuff classes.
    """
    vocabulary = dataset.vocabulary
    ids = category_ids(vocabulary)
    things = [c for c, thing in zip(ids, vocabulary.thing_classes, strict=True) if thing]
    stuffs = [c for c, thing in zip(ids, vocabulary.thing_classes, strict=True) if not thing]
    panoptic = bool(stuffs) if dataset.panoptic is None else dataset.panoptic
    # PQ needs a partition of the image: an instances file (things only, masks may overlap) gets
    # mask AP and mIoU; each part only if the task predicts its input
    include = [part for part, output in PARTS.items() if output in outputs]
    if not panoptic:
        include = [part for part in include if part != "PQ"]
    return segmentation_metrics(
        things, stuffs, len(vocabulary.class_names), include=include, ignore_index=IGNORE_INDEX
    )


def update_segmentation_metrics(
    metrics: SegmentationMetrics, vocabulary: Vocabulary, batch: Batch, predictions: list[dict[str, Any]]
) -> None:
    """Feed one batch's predictions and its targets to ``metrics``, one image at a time.

    A target with its ``original`` (evaluation datasets) is scored at the image's size on disk:
    the predictions are resized there as ``findlit test`` writes them (:func:`resize_nearest`, the
    same call), so the metrics equal the official tools' scores of the written files. Otherwise
    (a sample built without it) the targets are cropped to the image at the network's input size.
    """
    ids = category_ids(vocabulary)
    parts = set(metrics.include)
    for b, prediction in enumerate(predictions):
        truth = image_targets(batch, b)
        size = truth["masks"].shape[-2:]
        masks, labels, ignore, crowd = (
            truth["masks"],
            truth["labels"],
            truth.get("ignore_mask"),
            truth.get("iscrowd"),
        )
        update: dict[str, Any] = {}
        if "PQ" in parts:
            segment_ids, segments = prediction["panoptic"]
            pred = panoptic_prediction_map(resize_nearest(segment_ids, size), segments, ids)
            panoptic_truth = panoptic_target_map(masks, labels, ids, ignore, crowd)
            update["panoptic_pred"] = pred[None]
            update["panoptic_target"] = panoptic_truth.to(pred.device)[None]
        if "AP" in parts:
            instances = dict(prediction["instance"])
            instances["masks"] = resize_nearest(instances["masks"], size)
            device = instances["masks"].device
            truth_instances = instance_target(masks, labels, vocabulary.thing_classes, crowd)
            update["instance_preds"] = [instances]
            update["instance_targets"] = [{k: v.to(device) for k, v in truth_instances.items()}]
        if "mIoU" in parts:
            semantic = resize_nearest(prediction["semantic"], size)
            update["semantic_pred"] = semantic[None]
            update["semantic_target"] = semantic_map(masks, labels, ignore).to(semantic.device)[None]
        metrics.update(**update)
