"""Referring / entity grounding metrics: cIoU, mIoU and precision at IoU thresholds.

One predicted mask per sentence (or entity) is compared to its target mask:

- ``cIoU``: cumulative IoU, the sum of intersections over the sum of unions across the dataset.
- ``mIoU``: mean of the per-sample IoUs.
- ``P@t``: fraction of samples whose IoU is at least ``t`` (0.5, 0.7, 0.9 by default).

Empty masks: if both the prediction and the target are empty the sample's IoU is 1 (a correct "nothing
here"); if only one of them is empty it is 0. For cIoU a both-empty sample adds 0 to both sums; a
one-sided empty sample only grows the union. Before any update every value is 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

DEFAULT_THRESHOLDS: tuple[float, ...] = (0.5, 0.7, 0.9)


class GroundingMetrics(Metric):
    """cIoU, mIoU and ``P@t`` over binary masks, one prediction per target, any batch size.

    Args:
        thresholds: IoU thresholds ``t`` for the ``P@t`` keys.
        key_prefix: put before every key (e.g. ``"visual_"`` for the visual entities of an
            interleaved prompt, beside the text entities' unprefixed keys).
        **kwargs: forwarded to :class:`torchmetrics.Metric`.

    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    intersection: Tensor
    union: Tensor
    iou_sum: Tensor
    count: Tensor
    hits: Tensor

    def __init__(
        self, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, key_prefix: str = "", **kwargs: object
    ) -> None:
        super().__init__(**kwargs)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.key_prefix = key_prefix
        self.add_state("intersection", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("union", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("iou_sum", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state(
            "hits", default=torch.zeros(len(self.thresholds), dtype=torch.long), dist_reduce_fx="sum"
        )

    def update(self, pred_masks: Tensor, target_masks: Tensor) -> None:
        """Accumulate predicted and target masks ``[N, H, W]`` (bool, or nonzero = foreground)."""
        if pred_masks.shape != target_masks.shape:
            raise ValueError(f"pred {tuple(pred_masks.shape)} and target {tuple(target_masks.shape)} differ")
        if pred_masks.ndim < 2:
            raise ValueError("masks must be [N, *spatial]")
        pred = pred_masks.bool().flatten(1)
        target = target_masks.bool().flatten(1)
        inter = (pred & target).sum(dim=1).double()
        union = (pred | target).sum(dim=1).double()
        iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
        self.intersection += inter.sum()
        self.union += union.sum()
        self.iou_sum += iou.sum()
        self.count += iou.numel()
        thresholds = torch.tensor(self.thresholds, dtype=iou.dtype, device=iou.device)
        self.hits += (iou[:, None] >= thresholds[None, :]).sum(dim=0)

    def compute(self) -> dict[str, Tensor]:
        """Return ``{"cIoU", "mIoU", "P@0.5", "P@0.7", "P@0.9"}`` (keys follow ``thresholds``)."""
        count = self.count.clamp(min=1).double()
        # with no union every sample had empty prediction and target (IoU 1), or nothing was seen (0)
        ciou = self.intersection / self.union if self.union > 0 else (self.count > 0).double()
        out = {
            "cIoU": ciou,
            "mIoU": self.iou_sum / count,
        }
        for t, hits in zip(self.thresholds, self.hits, strict=True):
            out[f"P@{t:g}"] = hits.double() / count
        return {f"{self.key_prefix}{k}": v.float() for k, v in out.items()}
