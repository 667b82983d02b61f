"""Panoptic quality as panopticapi's ``pq_compute`` defines it, fast enough for COCO every epoch.

Each image is given as panopticapi reads it: a map of segment ids (0 = void, as in its PNGs) and the
segments' category ids and crowd flags (its ``segments_info``). Per image, one ``bincount`` over
``gt_index * (P + 1) + pred_index`` gives every intersection at once (row 0 and column 0 are the
void pixels), and the rules of ``panopticapi/evaluation.py`` (``pq_compute_single_core``) are applied
to that small matrix:

- a target and a predicted segment of the same category match when their IoU exceeds 0.5, with the
  union leaving out the predicted segment's void pixels; crowd targets never match;
- an unmatched non-crowd target is a false negative;
- an unmatched prediction is a false positive unless more than half of it lies on void pixels plus
  the crowd region of its own category (the *last* crowd segment of that category in the target's
  list, as panopticapi's dictionary keeps it);
- per category PQ = sum of matched IoUs / (TP + FP/2 + FN/2), SQ = IoU sum / TP, RQ = TP / (TP +
  FP/2 + FN/2); averages over the categories with TP + FP + FN > 0, for all, things and stuff.

Areas are counted on the maps (panopticapi takes the targets' areas from the JSON, which equal the
PNG's pixel counts in COCO). The states are per-category sums (float64 IoU, int64 counts), summed
across ranks when the metric syncs under DDP.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torchmetrics import Metric


@dataclass
class PanopticSegments:
    """One image's panoptic segmentation, as panopticapi's PNG and ``segments_info`` give it.

    Args:
        ids: int64[H,W] segment id of every pixel; 0 is void (unlabelled, or unassigned in a prediction).
        segment_ids: int64[N] the ids of the listed segments (nonzero, distinct).
        categories: int64[N] their category ids.
        iscrowd: bool[N] crowd regions (targets only; a prediction's are all False).

    """

    ids: Tensor
    segment_ids: Tensor
    categories: Tensor
    iscrowd: Tensor

    @classmethod
    def of(
        cls, ids: Tensor, segment_ids: Sequence[int], categories: Sequence[int], iscrowd: Sequence[bool] = ()
    ) -> PanopticSegments:
        """Build from plain lists (``iscrowd`` empty: no crowd segment)."""
        device = ids.device
        crowd = list(iscrowd) if len(iscrowd) else [False] * len(segment_ids)
        return cls(
            ids.long(),
            torch.tensor(list(segment_ids), dtype=torch.int64, device=device),
            torch.tensor(list(categories), dtype=torch.int64, device=device),
            torch.tensor(crowd, dtype=torch.bool, device=device),
        )


LOOKUP_LIMIT = 1 << 22
"""Largest segment id for which :func:`_dense_index` maps pixels through a table (32 MB at most);
larger ids (COCO's PNG ids reach 256^3) are looked up by binary search, which is slower."""


def _dense_index(segments: PanopticSegments) -> Tensor:
    """int64[H*W]: 0 for void pixels, k + 1 for pixels of listed segment k, N + 1 for unlisted ids."""
    flat = segments.ids.reshape(-1).long()
    count = int(segments.segment_ids.numel())
    if flat.numel() == 0:
        return flat
    largest = max(int(flat.max()), int(segments.segment_ids.max()) if count else 0)
    if largest < LOOKUP_LIMIT:
        # one gather through a table indexed by id: linear in the pixels, no sort
        table = torch.full((largest + 1,), count + 1, dtype=torch.int64, device=flat.device)
        table[segments.segment_ids.long()] = torch.arange(1, count + 1, device=flat.device)
        table[0] = 0
        return table[flat]
    unlisted = torch.full_like(flat, count + 1)
    if count:
        order = torch.argsort(segments.segment_ids)
        sorted_ids = segments.segment_ids[order]
        position = torch.searchsorted(sorted_ids, flat).clamp(max=count - 1)
        listed = sorted_ids[position] == flat
        unlisted = torch.where(listed, order[position] + 1, unlisted)
    return torch.where(flat == 0, torch.zeros_like(flat), unlisted)


class PanopticQuality(Metric):
    """PQ, SQ and RQ over all categories, things and stuff, and per category (panopticapi's rules).

    Args:
        things: category ids of countable things.
        stuffs: category ids of amorphous stuff.

    ``update(preds, targets)`` takes one :class:`PanopticSegments` per image for each; a predicted
    segment of a category that is neither a thing nor stuff is an error (panopticapi raises too).
    ``compute()`` returns ``PQ, SQ, RQ, PQ_th, SQ_th, RQ_th, PQ_st, SQ_st, RQ_st`` as float64 scalars
    in 0..1 (0 for a group without any counted category); :meth:`per_category` gives the per
    category values.

    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    iou: Tensor
    tp: Tensor
    fp: Tensor
    fn: Tensor

    def __init__(self, things: Collection[int], stuffs: Collection[int]) -> None:
        super().__init__()
        overlap = set(things) & set(stuffs)
        if overlap:
            raise ValueError(f"categories {sorted(overlap)} are both things and stuff")
        self.categories = sorted(set(things) | set(stuffs))
        self.is_thing = torch.tensor([c in set(things) for c in self.categories], dtype=torch.bool)
        count = len(self.categories)
        self.add_state("iou", torch.zeros(count, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tp", torch.zeros(count, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("fp", torch.zeros(count, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("fn", torch.zeros(count, dtype=torch.int64), dist_reduce_fx="sum")
        self._sorted_categories = torch.tensor(self.categories, dtype=torch.int64)

    def _category_index(self, categories: Tensor, side: str) -> Tensor:
        """int64[N] position of each category id in :attr:`categories` (-1 for an unknown target's)."""
        known = self._sorted_categories.to(categories.device)
        if known.numel() == 0:
            position = torch.zeros_like(categories)
            found = torch.zeros_like(categories, dtype=torch.bool)
        else:
            position = torch.searchsorted(known, categories).clamp(max=known.numel() - 1)
            found = known[position] == categories
        if side == "prediction" and not bool(found.all()):
            unknown = sorted(set(categories[~found].tolist()))
            raise ValueError(f"predicted segments of unknown category ids {unknown}")
        return torch.where(found, position, torch.full_like(position, -1))

    def update(self, preds: Sequence[PanopticSegments], targets: Sequence[PanopticSegments]) -> None:
        """Add the counts of each (prediction, target) pair of images."""
        if len(preds) != len(targets):
            raise ValueError(f"{len(preds)} predictions for {len(targets)} targets")
        for pred, target in zip(preds, targets, strict=True):
            if tuple(pred.ids.shape) != tuple(target.ids.shape):
                raise ValueError(
                    f"prediction of size {tuple(pred.ids.shape)} for a target of {tuple(target.ids.shape)}"
                )
            self._update_image(pred, target)

    def _update_image(self, pred: PanopticSegments, target: PanopticSegments) -> None:
        device = self.iou.device
        num_pred, num_target = int(pred.segment_ids.numel()), int(target.segment_ids.numel())
        p = _dense_index(pred).to(device)
        g = _dense_index(target).to(device)
        if bool((p == num_pred + 1).any()):
            unlisted = sorted(set(pred.ids.reshape(-1)[(p == num_pred + 1).cpu()].tolist()))[:5]
            raise ValueError(f"predicted map holds segment ids {unlisted} that its segment list lacks")
        # rows: void, the G target segments, then pixels of ids the target does not list (neither
        # void nor a segment, as in panopticapi); columns: void, the P predicted segments
        joint = torch.bincount(g * (num_pred + 1) + p, minlength=(num_target + 2) * (num_pred + 1))
        inter = joint.reshape(num_target + 2, num_pred + 1).double()
        pred_area = inter.sum(dim=0)[1:]  # [P]
        target_area = inter.sum(dim=1)[1 : num_target + 1]  # [G]
        on_void = inter[0, 1:]  # [P] predicted pixels on void target pixels
        pred_category = self._category_index(pred.categories.to(device), "prediction")
        target_category = self._category_index(target.categories.to(device), "target")
        crowd = target.iscrowd.to(device).bool()
        # predictions listed but absent from the map have no area: panopticapi refuses them; skip
        present = pred_area > 0

        pairs = inter[1 : num_target + 1, 1:]  # [G,P]
        union = target_area[:, None] + pred_area[None, :] - pairs - on_void[None, :]
        iou = pairs / union.clamp(min=1)
        same = (target_category[:, None] == pred_category[None, :]) & (target_category[:, None] >= 0)
        matched = (iou > 0.5) & same & ~crowd[:, None] & present[None, :]
        # IoU > 0.5 matches at most one partner on each side, so the pairs are disjoint
        target_matched = matched.any(dim=1)
        pred_matched = matched.any(dim=0)
        rows, cols = matched.nonzero(as_tuple=True)
        counted = target_category[rows]
        self.tp.index_add_(0, counted, torch.ones_like(counted))
        self.iou.index_add_(0, counted, iou[rows, cols])

        missed = ~target_matched & ~crowd & (target_category >= 0)
        self.fn.index_add_(0, target_category[missed], torch.ones_like(target_category[missed]))

        # per prediction, its pixels on the last crowd segment of its own category
        crowd_rows = torch.full((len(self.categories),), -1, dtype=torch.int64, device=device)
        for row in crowd.nonzero(as_tuple=True)[0].tolist():
            if int(target_category[row]) >= 0:
                crowd_rows[int(target_category[row])] = row
        own_crowd = crowd_rows[pred_category]  # [P]
        on_crowd = torch.where(
            own_crowd >= 0,
            pairs[own_crowd.clamp(min=0), torch.arange(num_pred, device=device)],
            torch.zeros_like(on_void),
        )
        ignored = (on_void + on_crowd) / pred_area.clamp(min=1) > 0.5
        false = ~pred_matched & present & ~ignored
        self.fp.index_add_(0, pred_category[false], torch.ones_like(pred_category[false]))

    def per_category(self) -> dict[int, dict[str, float]]:
        """Category id -> ``{"pq", "sq", "rq"}`` (zeros for a category without TP, FP or FN)."""
        pq, sq, rq, _ = self._per_category_values()
        return {
            category: {"pq": float(pq[k]), "sq": float(sq[k]), "rq": float(rq[k])}
            for k, category in enumerate(self.categories)
        }

    def _per_category_values(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        tp, fp, fn = self.tp.double(), self.fp.double(), self.fn.double()
        counted = (self.tp + self.fp + self.fn) > 0
        denominator = (tp + 0.5 * fp + 0.5 * fn).clamp(min=1e-12)
        pq = torch.where(counted, self.iou / denominator, torch.zeros_like(tp))
        sq = torch.where(self.tp > 0, self.iou / tp.clamp(min=1), torch.zeros_like(tp))
        rq = torch.where(counted, tp / denominator, torch.zeros_like(tp))
        return pq, sq, rq, counted

    def compute(self) -> dict[str, Tensor]:
        """``PQ, SQ, RQ`` over all counted categories, ``*_th`` over things, ``*_st`` over stuff."""
        pq, sq, rq, counted = self._per_category_values()
        is_thing = self.is_thing.to(counted.device)
        out: dict[str, Tensor] = {}
        for suffix, group in (("", counted), ("_th", counted & is_thing), ("_st", counted & ~is_thing)):
            n = group.sum()
            for name, values in (("PQ", pq), ("SQ", sq), ("RQ", rq)):
                out[name + suffix] = (
                    (values * group).sum() / n if n > 0 else torch.zeros((), dtype=torch.float64)
                )
        return out
