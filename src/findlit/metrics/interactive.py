"""Interactive segmentation metrics: clicks needed to reach an IoU (NoC), IoU after k clicks, box IoU.

Each evaluated object is given as its IoU curve: the IoU of the prediction after click 1, 2, ...,
``max_clicks`` (RITM's protocol, ``isegm/inference/utils.py``; FIND reports NoC@0.5/0.8/0.85/0.9,
``configs/find/focalt_unicl_lang.yaml`` evaluates ``pascalvoc_val_Point``):

- ``NoC@t``: the number of the first click whose IoU reaches ``t``; ``max_clicks`` (20) when none
  does, averaged over objects;
- ``mIoU@k``: the mean over objects of the IoU after click k (k = 1, 3, 5);
- ``box_mIoU``: the mean IoU of the objects prompted by their bounding box alone.

A curve may end early with NaN once its IoU has reached the highest NoC threshold (a simulation may
stop clicking there: every NoC is then known); the IoUs after clicks 1, 3 and 5 must be given. The
states are sums and counts, summed across ranks under DDP.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

NOC_THRESHOLDS: tuple[float, ...] = (0.5, 0.8, 0.85, 0.9)
IOU_AFTER_CLICKS: tuple[int, ...] = (1, 3, 5)
MAX_CLICKS = 20


def clicks_to_reach(ious: Tensor, threshold: float, max_clicks: int = MAX_CLICKS) -> Tensor:
    """float64[N]: the first click (1-based) with IoU >= ``threshold`` of each curve float[N,K].

    A curve that never reaches it counts ``max_clicks``. NaN entries (clicks not simulated) never
    reach the threshold.
    """
    reached = ious.nan_to_num(nan=-1.0) >= threshold
    first = reached.to(torch.int64).argmax(dim=1) + 1
    return torch.where(reached.any(dim=1), first, torch.full_like(first, max_clicks)).double()


class InteractiveMetrics(Metric):
    """NoC@0.5/0.8/0.85/0.9, mIoU after 1, 3 and 5 clicks and box mIoU (module docstring).

    Args:
        max_clicks: the most clicks per object (a curve's length; NoC's value when never reached).
        thresholds: the NoC thresholds.
        after_clicks: the clicks after which the mean IoU is reported.

    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None  # NoC: lower is better; IoU: higher

    noc_sum: Tensor
    iou_sum: Tensor
    objects: Tensor
    box_iou_sum: Tensor
    box_objects: Tensor

    def __init__(
        self,
        max_clicks: int = MAX_CLICKS,
        thresholds: Sequence[float] = NOC_THRESHOLDS,
        after_clicks: Sequence[int] = IOU_AFTER_CLICKS,
    ) -> None:
        super().__init__()
        if max_clicks < max(after_clicks, default=1):
            raise ValueError(f"max_clicks {max_clicks} is below the clicks reported {list(after_clicks)}")
        self.max_clicks = max_clicks
        self.thresholds = tuple(float(t) for t in thresholds)
        self.after_clicks = tuple(int(k) for k in after_clicks)
        self.add_state(
            "noc_sum", torch.zeros(len(self.thresholds), dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state(
            "iou_sum", torch.zeros(len(self.after_clicks), dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state("objects", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("box_iou_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("box_objects", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, ious: Tensor | None = None, box_ious: Tensor | None = None) -> None:
        """Add objects' click curves float[N,K] (K <= ``max_clicks``) and/or box-prompt IoUs float[M]."""
        if ious is not None and ious.numel():
            curves = ious.detach().double().cpu()
            if curves.dim() != 2 or curves.shape[1] > self.max_clicks:
                raise ValueError(f"ious must be float[N,K<={self.max_clicks}], got {list(curves.shape)}")
            needed = max(self.after_clicks, default=0)
            if curves.shape[1] < needed or bool(curves[:, [k - 1 for k in self.after_clicks]].isnan().any()):
                raise ValueError(f"every curve needs the IoUs after clicks {list(self.after_clicks)}")
            noc = torch.stack([clicks_to_reach(curves, t, self.max_clicks) for t in self.thresholds], dim=1)
            self.noc_sum += noc.sum(dim=0).to(self.noc_sum.device)
            after = curves[:, [k - 1 for k in self.after_clicks]]
            self.iou_sum += after.sum(dim=0).to(self.iou_sum.device)
            self.objects += curves.shape[0]
        if box_ious is not None and box_ious.numel():
            self.box_iou_sum += box_ious.detach().double().sum().to(self.box_iou_sum.device)
            self.box_objects += box_ious.numel()

    def compute(self) -> dict[str, Tensor]:
        """``NoC@50, NoC@80, NoC@85, NoC@90``, ``mIoU@1, mIoU@3, mIoU@5`` (0..1) and ``box_mIoU``."""
        objects = self.objects.clamp(min=1).double()
        out: dict[str, Tensor] = {}
        for index, threshold in enumerate(self.thresholds):
            out[f"NoC@{round(threshold * 100)}"] = self.noc_sum[index] / objects
        for index, clicks in enumerate(self.after_clicks):
            out[f"mIoU@{clicks}"] = self.iou_sum[index] / objects
        out["box_mIoU"] = self.box_iou_sum / self.box_objects.clamp(min=1).double()
        return out
