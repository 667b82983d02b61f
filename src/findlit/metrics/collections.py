"""Metric builders per task, built once per dataset and cloned per stage with a ``<stage>/<dataset>/`` prefix.

- Generic segmentation needs three different inputs (panoptic ``[B, H, W, 2]`` maps, instance dicts, and
  semantic label maps), which a :class:`torchmetrics.MetricCollection` cannot dispatch (it requires one
  update signature), so :func:`segmentation_metrics` returns the small :class:`SegmentationMetrics` wrapper
  with the same ``update`` / ``compute`` / ``reset`` / ``clone(prefix=...)`` surface.
- Retrieval, grounding and interleave return plain :class:`~torchmetrics.MetricCollection` objects.
  Interleave combines grounding and retrieval; update its members separately
  (``collection["grounding"].update(...)``, ``collection["retrieval"].update(...)``).

PQ is :class:`~findlit.metrics.panoptic_quality.PanopticQuality`, panopticapi's ``pq_compute`` rules
(equal to it to 1e-6 on the COCO sample; torchmetrics' ``PanopticQuality`` was 40 to 93 times slower
and treats unassigned predicted pixels as void, which panopticapi does not). Target pixels of a
category outside ``things`` and ``stuffs`` (e.g. :data:`~findlit.metrics.panoptic.VOID_CATEGORY`)
are void: left out of the IoUs, and a predicted segment lying mostly on them is no false positive.
Predicted pixels of such a category are "unassigned" (void in the prediction): they still count in
the target segments' areas. A negative target instance id marks a crowd segment.

Semantic mIoU uses findlit's :class:`~findlit.metrics.semantic_iou.SemanticIoU`, equal to
:class:`~torchmetrics.classification.MulticlassJaccardIndex` with ``average="macro"`` and 15 times
faster: it accumulates one confusion matrix over the dataset (intersections and unions summed over all
pixels, as Detectron2's semantic evaluator does), skips classes absent from both predictions and
targets, and honours an ``ignore_index``. :class:`torchmetrics.segmentation.MeanIoU` instead averages
per-image scores, which depends on how the dataset is split into images.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Sequence
from typing import Any, TypeVar, cast

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection

from findlit.metrics.grounding import GroundingMetrics
from findlit.metrics.mean_ap import ShardedMeanAveragePrecision
from findlit.metrics.panoptic_quality import PanopticQuality, PanopticSegments
from findlit.metrics.retrieval import RetrievalRecall
from findlit.metrics.semantic_iou import SemanticIoU

SEGMENTATION_PARTS: tuple[str, ...] = ("PQ", "AP", "mIoU")
DEFAULT_IGNORE_INDEX = 255


class SegmentationMetrics(nn.Module):
    """PQ (with SQ, RQ, things/stuff PQ), mask AP and semantic mIoU behind one ``update``.

    Args:
        things: category ids of countable things.
        stuffs: category ids of amorphous stuff.
        num_classes: number of semantic classes (labels ``0 .. num_classes - 1``).
        include: which of ``"PQ"``, ``"AP"``, ``"mIoU"`` to compute.
        ignore_index: semantic label ignored by mIoU.
        prefix: prepended to every key returned by :meth:`compute`.

    """

    def __init__(
        self,
        things: Collection[int],
        stuffs: Collection[int],
        num_classes: int,
        include: Sequence[str] = SEGMENTATION_PARTS,
        ignore_index: int = DEFAULT_IGNORE_INDEX,
        prefix: str | None = None,
    ) -> None:
        super().__init__()
        unknown = set(include) - set(SEGMENTATION_PARTS)
        if unknown:
            raise ValueError(
                f"unknown segmentation metrics {sorted(unknown)}; choose from {SEGMENTATION_PARTS}"
            )
        self.things = sorted(things)
        self.stuffs = sorted(stuffs)
        self.num_classes = num_classes
        self.include = tuple(p for p in SEGMENTATION_PARTS if p in include)
        self.prefix = prefix or ""
        self.metrics = nn.ModuleDict()
        if "PQ" in self.include:
            self.metrics["PQ"] = PanopticQuality(things=self.things, stuffs=self.stuffs)
        if "AP" in self.include:
            # its distributed sync accepts ranks of different image counts (unpadded shards)
            self.metrics["AP"] = ShardedMeanAveragePrecision(iou_type="segm")
        if "mIoU" in self.include:
            self.metrics["mIoU"] = SemanticIoU(num_classes=num_classes, ignore_index=ignore_index)

    def update(
        self,
        panoptic_pred: Tensor | None = None,
        panoptic_target: Tensor | None = None,
        instance_preds: list[dict[str, Tensor]] | None = None,
        instance_targets: list[dict[str, Tensor]] | None = None,
        semantic_pred: Tensor | None = None,
        semantic_target: Tensor | None = None,
    ) -> None:
        """Update every included metric whose inputs are given.

        Args:
            panoptic_pred: ``[B, H, W, 2]`` long (category id, instance id) per pixel; a category
                outside ``things`` and ``stuffs`` marks unassigned pixels.
            panoptic_target: same layout as ``panoptic_pred``; a category outside ``things`` and
                ``stuffs`` marks void pixels.
            instance_preds: per image ``{"masks": bool[N, H, W], "scores": float[N], "labels": long[N]}``.
            instance_targets: per image ``{"masks": bool[M, H, W], "labels": long[M]}``, optionally
                ``"iscrowd": long[M]`` (detections matched to a crowd region are ignored, as in COCO).
            semantic_pred: ``[B, H, W]`` long class index (or ``[B, C, H, W]`` scores).
            semantic_target: ``[B, H, W]`` long class index, ``ignore_index`` for unlabeled pixels.

        """
        pairs = {
            "PQ": (panoptic_pred, panoptic_target),
            "AP": (instance_preds, instance_targets),
            "mIoU": (semantic_pred, semantic_target),
        }
        for name in self.metrics:
            metric = self._metric(name)
            pred, target = pairs[name]
            if (pred is None) != (target is None):
                raise ValueError(f"{name}: predictions and targets must be given together")
            if pred is None:
                continue
            if name == "PQ":
                known = torch.tensor([*self.things, *self.stuffs], dtype=torch.long)
                preds = [segments_of_map(p, known) for p in cast(Tensor, pred)]
                targets = [segments_of_map(t, known) for t in cast(Tensor, target)]
                metric.update(preds, targets)
                continue
            metric.update(pred, target)

    def compute(self) -> dict[str, Tensor]:
        """Return a flat dict of ``PQ, SQ, RQ, PQ_th, PQ_st, AP, AP50, AP75, mIoU`` (included parts only)."""
        out: dict[str, Tensor] = {}
        if "PQ" in self.metrics:
            panoptic = self._metric("PQ").compute()
            out.update({key: panoptic[key] for key in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st")})
        if "AP" in self.metrics:
            ap = self._metric("AP").compute()
            out.update({"AP": ap["map"], "AP50": ap["map_50"], "AP75": ap["map_75"]})
        if "mIoU" in self.metrics:
            out["mIoU"] = self._metric("mIoU").compute()
        return {f"{self.prefix}{k}": v for k, v in out.items()}

    def _metric(self, name: str) -> Metric:
        return cast(Metric, self.metrics[name])

    def reset(self) -> None:
        """Reset every included metric."""
        for name in self.metrics:
            self._metric(name).reset()

    def clone(self, prefix: str | None = None) -> SegmentationMetrics:
        """Return a deep copy (fresh states are not implied: call on an unused instance) with ``prefix``."""
        new = copy.deepcopy(self)
        if prefix is not None:
            new.prefix = prefix
        return new

    def forward(self, *args: Any, **kwargs: Any) -> None:
        """Alias of :meth:`update` (no per-batch values are returned)."""
        self.update(*args, **kwargs)


def segments_of_map(panoptic: Tensor, known: Tensor) -> PanopticSegments:
    """The segments of one ``int64[H,W,2]`` (category id, instance id) map, as PanopticQuality reads them.

    Pixels of a category outside ``known`` (e.g. :data:`VOID_CATEGORY`) are void; every other
    |instance| is one segment (instance ids are unique within a map), a crowd segment when its
    instance id is negative. The segments are numbered 1..N (void 0) whatever their instance ids
    (COCO's PNG ids reach 256^3), so the counts gather through small tables. Linear in the pixels,
    without a sort of them or a table as large as the ids (:func:`_relabel`; NumPy on the CPU, as
    :func:`~findlit.metrics.panoptic_quality.image_counts` reads them).
    """
    array = panoptic.detach().long().cpu().numpy()
    category, instance = array[..., 0].reshape(-1), array[..., 1].reshape(-1)
    known_ids = known.detach().long().cpu().numpy()
    lowest = min(int(category.min()), int(known_ids.min())) if category.size else 0
    highest = max(int(category.max()) if category.size else 0, int(known_ids.max()))
    is_known = np.zeros(highest - lowest + 1, dtype=np.int64)
    is_known[known_ids - lowest] = 1
    # + 1 keeps an instance id 0 of a known category off void (id 0)
    key = is_known[category - lowest] * (np.abs(instance) + 1)
    labels, keys, first = _relabel(key)
    # label 0 is void when the map has void pixels (key 0 sorts first); else the segments start at 0
    if keys.size and keys[0] == 0:
        keys, first = keys[1:], first[1:]
    else:
        labels += 1
    return PanopticSegments(
        torch.from_numpy(labels.reshape(array.shape[:-1])),
        torch.arange(1, len(keys) + 1, dtype=torch.int64),
        torch.from_numpy(category[first]),
        torch.from_numpy(instance[first] < 0),
    )


def _relabel(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense labels of int64[n] ``values``: ``(labels int64[n], unique values sorted, first index of each)``.

    ``labels[i]`` is the rank of ``values[i]`` among the unique values. A segmentation map is made of
    runs of equal values (along its rows), far fewer than its pixels: the unique values are found
    among the runs' first values, and the labels are each run's label repeated over its length, so
    the pixels are passed over three times (compare, find the runs, repeat) and never sorted.
    """
    if values.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    starts = np.concatenate(([0], np.flatnonzero(values[1:] != values[:-1]) + 1))
    keys, first_run, run_labels = np.unique(values[starts], return_index=True, return_inverse=True)
    lengths = np.diff(np.append(starts, values.size))
    labels = np.repeat(run_labels.astype(np.int64), lengths)
    return labels, keys, starts[first_run]


def segmentation_metrics(
    things: Collection[int],
    stuffs: Collection[int],
    num_classes: int,
    include: Sequence[str] = SEGMENTATION_PARTS,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
) -> SegmentationMetrics:
    """Generic segmentation metrics (PQ/SQ/RQ, mask AP, semantic mIoU)."""
    return SegmentationMetrics(things, stuffs, num_classes, include=include, ignore_index=ignore_index)


def retrieval_metrics(chunk_size: int = 1024) -> MetricCollection:
    """``IR@1/5/10`` and ``TR@1/5/10`` over the whole gallery."""
    return MetricCollection({"retrieval": RetrievalRecall(chunk_size=chunk_size)}, compute_groups=False)


def grounding_metrics() -> MetricCollection:
    """``cIoU``, ``mIoU``, ``P@0.5``, ``P@0.7``, ``P@0.9``."""
    return MetricCollection({"grounding": GroundingMetrics()}, compute_groups=False)


def interleave_metrics(
    chunk_size: int = 1024, retrieval: bool = True, visual: bool = False
) -> MetricCollection:
    """Grounding metrics on entities, and interleave retrieval recall; update the members separately.

    Members: ``grounding`` (text entities: ``cIoU``, ...) and ``retrieval`` (``IR@k``, ``TR@k``);
    with ``visual`` also ``visual_grounding`` (visual entities: ``visual_cIoU``, ...) and, with
    ``retrieval``, ``visual_retrieval`` (interleaved prompts with visual entities: ``visual_IR@k``).
    """
    members: dict[str, Metric | MetricCollection] = {"grounding": GroundingMetrics()}
    if retrieval:
        members["retrieval"] = RetrievalRecall(chunk_size=chunk_size)
    if visual:
        members["visual_grounding"] = GroundingMetrics(key_prefix="visual_")
        if retrieval:
            members["visual_retrieval"] = RetrievalRecall(chunk_size=chunk_size, key_prefix="visual_")
    return MetricCollection(members, compute_groups=False)


MetricsT = TypeVar("MetricsT", MetricCollection, SegmentationMetrics)


def clone_for_stage(metrics: MetricsT, stage: str, dataset: str) -> MetricsT:
    """Copy ``metrics`` with keys prefixed ``<stage>/<dataset>/`` (e.g. ``val/coco/PQ``)."""
    prefix = f"{stage}/{dataset}/"
    return metrics.clone(prefix=prefix)
