"""Metric builders per task, built once per dataset and cloned per stage with a ``<stage>/<dataset>/`` prefix.

- Generic segmentation needs three different inputs (panoptic ``[B, H, W, 2]`` maps, instance dicts, and
  semantic label maps), which a :class:`torchmetrics.MetricCollection` cannot dispatch (it requires one
  update signature), so :func:`segmentation_metrics` returns the small :class:`SegmentationMetrics` wrapper
  with the same ``update`` / ``compute`` / ``reset`` / ``clone(prefix=...)`` surface.
- Retrieval, grounding and interleave return plain :class:`~torchmetrics.MetricCollection` objects.
  Interleave combines grounding and retrieval; update its members separately
  (``collection["grounding"].update(...)``, ``collection["retrieval"].update(...)``).

PQ follows panopticapi's definition (per category, a predicted and a target segment match when their IoU
exceeds 0.5; PQ = sum of matched IoUs / (TP + FP/2 + FN/2); averaged over the categories that occur).
Target pixels of a category outside ``things`` and ``stuffs`` (e.g.
:data:`~findlit.metrics.panoptic.VOID_CATEGORY`) are void: left out of the IoUs, and a predicted segment
lying mostly on them is no false positive. Predicted pixels of such a category are "unassigned":
:class:`torchmetrics.detection.PanopticQuality` would treat them as void too, and then drop a target
segment that is mostly unassigned from the false negatives and shrink the union of the others, which
panopticapi does not do. They are therefore given an extra stuff category of their own (never in a
target, left out of the averages), so that they still count in the target segments' areas.

Semantic mIoU uses :class:`~torchmetrics.classification.MulticlassJaccardIndex` with ``average="macro"``:
it accumulates one confusion matrix over the dataset (intersections and unions summed over all pixels, as
Detectron2's semantic evaluator does), skips classes absent from both predictions and targets, and honours
an ``ignore_index``. :class:`torchmetrics.segmentation.MeanIoU` instead averages per-image scores, which
depends on how the dataset is split into images.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Sequence
from typing import Any, TypeVar, cast

import torch
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassJaccardIndex
from torchmetrics.detection import PanopticQuality

from findlit.metrics.grounding import GroundingMetrics
from findlit.metrics.mean_ap import ShardedMeanAveragePrecision
from findlit.metrics.panoptic import VOID_CATEGORY
from findlit.metrics.retrieval import RetrievalRecall

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
        # unassigned predicted pixels get this stuff category (see the module docstring); being the
        # largest id it is PanopticQuality's last per-category slot
        self.unassigned = 1 + max([0, *self.things, *self.stuffs])
        if "PQ" in self.include:
            self.metrics["PQ"] = PanopticQuality(
                things=set(self.things),
                stuffs={*self.stuffs, self.unassigned},
                allow_unknown_preds_category=True,
            )
        if "AP" in self.include:
            # its distributed sync accepts ranks of different image counts (unpadded shards)
            self.metrics["AP"] = ShardedMeanAveragePrecision(iou_type="segm")
        if "mIoU" in self.include:
            self.metrics["mIoU"] = MulticlassJaccardIndex(
                num_classes=num_classes, average="macro", ignore_index=ignore_index
            )

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
                pred, target = self._panoptic_inputs(cast(Tensor, pred), cast(Tensor, target))
            metric.update(pred, target)

    def _panoptic_inputs(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Unknown predicted categories -> the unassigned stuff; unknown target categories -> void."""
        known = torch.tensor([*self.things, *self.stuffs], dtype=torch.long, device=pred.device)
        pred, target = pred.long().clone(), target.long().clone()
        pred[~torch.isin(pred[..., 0], known)] = torch.tensor([self.unassigned, 0], device=pred.device)
        # unassigned is a known PanopticQuality category: a target must never carry it
        target[~torch.isin(target[..., 0], known.to(target.device))] = torch.tensor(
            [VOID_CATEGORY, 0], device=target.device
        )
        return pred, target

    def compute(self) -> dict[str, Tensor]:
        """Return a flat dict of ``PQ, SQ, RQ, PQ_th, PQ_st, AP, AP50, AP75, mIoU`` (included parts only)."""
        out: dict[str, Tensor] = {}
        if "PQ" in self.metrics:
            out.update(
                _panoptic_summary(
                    self._metric("PQ"),
                    num_things=len(self.things),
                    num_categories=len(self.things) + len(self.stuffs),
                )
            )
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


def _panoptic_summary(metric: Metric, num_things: int, num_categories: int) -> dict[str, Tensor]:
    """PQ, SQ, RQ averaged over categories that occur, and PQ over things and over stuff.

    Computed from :class:`PanopticQuality`'s per-category states (things first, then stuff, each sorted
    by id), because its own ``compute`` cannot split the average into things and stuff. Only the first
    ``num_categories`` slots are real categories (the last one is the unassigned prediction's).
    """
    with metric.sync_context():  # no-op outside distributed runs; sums states across ranks otherwise
        tp, fp, fn, iou_sum = (
            cast(Tensor, getattr(metric, name)).double()[:num_categories]
            for name in ("true_positives", "false_positives", "false_negatives", "iou_sum")
        )
    sq = torch.where(tp > 0, iou_sum / tp.clamp(min=1), torch.zeros_like(tp))
    denominator = tp + 0.5 * fp + 0.5 * fn
    rq = torch.where(denominator > 0, tp / denominator.clamp(min=1e-12), torch.zeros_like(tp))
    pq = sq * rq
    present = torch.gt(denominator, 0)
    is_thing = torch.zeros_like(present)
    is_thing[:num_things] = True

    def mean(values: Tensor, mask: Tensor) -> Tensor:
        return (
            values[mask].mean()
            if bool(mask.any())
            else torch.zeros((), dtype=values.dtype, device=values.device)
        )

    return {
        "PQ": mean(pq, present),
        "SQ": mean(sq, present),
        "RQ": mean(rq, present),
        "PQ_th": mean(pq, present & is_thing),
        "PQ_st": mean(pq, present & ~is_thing),
    }


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


def interleave_metrics(chunk_size: int = 1024) -> MetricCollection:
    """Grounding metrics on entities plus interleave retrieval recall; update the members separately."""
    return MetricCollection(
        {"grounding": GroundingMetrics(), "retrieval": RetrievalRecall(chunk_size=chunk_size)},
        compute_groups=False,
    )


MetricsT = TypeVar("MetricsT", MetricCollection, SegmentationMetrics)


def clone_for_stage(metrics: MetricsT, stage: str, dataset: str) -> MetricsT:
    """Copy ``metrics`` with keys prefixed ``<stage>/<dataset>/`` (e.g. ``val/coco/PQ``)."""
    prefix = f"{stage}/{dataset}/"
    return metrics.clone(prefix=prefix)
