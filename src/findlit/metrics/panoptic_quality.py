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

import numpy as np
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


def _dense_index(ids: np.ndarray, segment_ids: np.ndarray, scale: int = 1) -> np.ndarray:
    """int64[H*W]: 0 for void pixels, k + 1 for pixels of listed segment k, N + 1 for unlisted ids.

    Each value is multiplied by ``scale`` (the row stride of a joint histogram), in the table when
    there is one, so that it costs no pass over the pixels.
    """
    count = len(segment_ids)
    if ids.size == 0:
        return np.zeros(0, dtype=np.int64)  # a fresh array: callers update it in place
    largest = int(segment_ids.max()) if count else 0
    if largest < LOOKUP_LIMIT:
        # one gather through a table indexed by id: linear in the pixels, no sort. The table ends
        # with one "unlisted" entry past the largest listed id, and the gather clips every larger id
        # to it, so the ids' maximum need not be found first (ids are non-negative)
        table = np.full(largest + 2, count + 1, dtype=np.int64)
        table[segment_ids] = np.arange(1, count + 1)
        table[0] = 0
        if scale != 1:
            table *= scale
        return np.take(table, ids, mode="clip")
    order = np.argsort(segment_ids)
    sorted_ids = segment_ids[order]
    position = np.minimum(np.searchsorted(sorted_ids, ids), max(count - 1, 0))
    listed = sorted_ids[position] == ids if count else np.zeros(ids.shape, dtype=bool)
    index = np.where(listed, order[position] + 1 if count else 0, count + 1)
    index = np.where(ids == 0, 0, index)
    if scale != 1:
        index *= scale
    return index


@dataclass
class ImageCounts:
    """One image's contribution per category position: float64 IoU sum and int64 TP, FP, FN."""

    iou: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray


def image_counts(pred: PanopticSegments, target: PanopticSegments, categories: np.ndarray) -> ImageCounts:
    """The counts of one image by panopticapi's rules (module docstring), per position in ``categories``.

    Computed with NumPy on the CPU: the per-image work is one pass over the pixels and a few
    operations on a (targets x predictions) matrix, where NumPy's small-array overhead is far below
    torch's. ``categories`` is sorted; a predicted category outside it is an error.
    """
    pred_ids = pred.ids.detach().reshape(-1).long().cpu().numpy()
    target_ids = target.ids.detach().reshape(-1).long().cpu().numpy()
    pred_segments = pred.segment_ids.detach().long().cpu().numpy()
    target_segments = target.segment_ids.detach().long().cpu().numpy()
    num_pred, num_target = len(pred_segments), len(target_segments)
    # rows: void, the G target segments, then pixels of ids the target does not list (neither void
    # nor a segment, as in panopticapi); columns: void, the P predicted segments, then pixels of ids
    # the prediction does not list (an error, found in the same pass). In place: g is a fresh array.
    columns = num_pred + 2
    p = _dense_index(pred_ids, pred_segments)
    g = _dense_index(target_ids, target_segments, scale=columns)
    g += p
    joint = np.bincount(g, minlength=(num_target + 2) * columns).reshape(num_target + 2, columns)
    if joint[:, -1].any():
        unlisted = sorted({int(i) for i in pred_ids[p == num_pred + 1][:1000]})[:5]
        raise ValueError(f"predicted map holds segment ids {unlisted} that its segment list lacks")
    inter = joint[:, :-1].astype(np.float64)
    pred_area = inter.sum(axis=0)[1:]
    target_area = inter.sum(axis=1)[1 : num_target + 1]
    on_void = inter[0, 1:]  # predicted pixels on void target pixels
    pred_category = _positions(pred.categories, categories, "prediction")
    target_category = _positions(target.categories, categories, "target")
    crowd = target.iscrowd.detach().bool().cpu().numpy()
    present = pred_area > 0  # listed predictions absent from the map: panopticapi refuses them; skip

    pairs = inter[1 : num_target + 1, 1:]  # [G,P]
    union = target_area[:, None] + pred_area[None, :] - pairs - on_void[None, :]
    iou = pairs / np.maximum(union, 1)
    same = (target_category[:, None] == pred_category[None, :]) & (target_category[:, None] >= 0)
    matched = (iou > 0.5) & same & ~crowd[:, None] & present[None, :]
    # IoU > 0.5 matches at most one partner on each side, so the pairs are disjoint
    rows, cols = np.nonzero(matched)
    size = len(categories)
    counts = ImageCounts(
        iou=np.bincount(target_category[rows], weights=iou[rows, cols], minlength=size),
        tp=np.bincount(target_category[rows], minlength=size),
        fp=np.zeros(size, dtype=np.int64),
        fn=np.bincount(
            target_category[~matched.any(axis=1) & ~crowd & (target_category >= 0)], minlength=size
        ),
    )
    # per prediction, its pixels on the last crowd segment of its own category (panopticapi's dict)
    own_crowd = np.full(size, -1, dtype=np.int64)
    for row in np.nonzero(crowd & (target_category >= 0))[0]:
        own_crowd[target_category[row]] = row
    crowd_row = own_crowd[pred_category]
    on_crowd = np.where(crowd_row >= 0, pairs[np.maximum(crowd_row, 0), np.arange(num_pred)], 0.0)
    ignored = (on_void + on_crowd) / np.maximum(pred_area, 1) > 0.5
    counts.fp = np.bincount(pred_category[~matched.any(axis=0) & present & ~ignored], minlength=size)
    return counts


def _positions(ids: Tensor, categories: np.ndarray, side: str) -> np.ndarray:
    """int64[N] position of each category id in sorted ``categories``; -1 for a target's unknown one."""
    values = ids.detach().long().cpu().numpy()
    if len(categories) == 0:
        position, found = np.zeros_like(values), np.zeros(values.shape, dtype=bool)
    else:
        position = np.minimum(np.searchsorted(categories, values), len(categories) - 1)
        found = categories[position] == values
    if side == "prediction" and not found.all():
        raise ValueError(f"predicted segments of unknown category ids {sorted(set(values[~found].tolist()))}")
    return np.where(found, position, -1)


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
        self._sorted_categories = np.array(self.categories, dtype=np.int64)

    def update(self, preds: Sequence[PanopticSegments], targets: Sequence[PanopticSegments]) -> None:
        """Add the counts of each (prediction, target) pair of images."""
        if len(preds) != len(targets):
            raise ValueError(f"{len(preds)} predictions for {len(targets)} targets")
        size = len(self.categories)
        totals = {
            name: np.zeros(size, dtype=np.float64 if name == "iou" else np.int64)
            for name in ("iou", "tp", "fp", "fn")
        }
        for pred, target in zip(preds, targets, strict=True):
            if tuple(pred.ids.shape) != tuple(target.ids.shape):
                raise ValueError(
                    f"prediction of size {tuple(pred.ids.shape)} for a target of {tuple(target.ids.shape)}"
                )
            counts = image_counts(pred, target, self._sorted_categories)
            for name in ("iou", "tp", "fp", "fn"):
                totals[name] += getattr(counts, name)
        for name, total in totals.items():
            state = getattr(self, name)
            state += torch.from_numpy(total).to(device=state.device, dtype=state.dtype)

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
