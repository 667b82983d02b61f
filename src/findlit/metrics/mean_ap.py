"""Mask AP whose distributed sync accepts ranks that saw different numbers of images.

torchmetrics' :class:`~torchmetrics.detection.MeanAveragePrecision` keeps one list entry per image
and gathers them entry by entry: one collective per image and state, and an interleave of the
ranks' lists that indexes every rank up to the first rank's length. That assumes every rank saw
as many images, which a padding sampler (``DistributedSampler``) ensures by repeating images, so
that they are counted twice. findlit's evaluation shards are unpadded
(:class:`~findlit.data.sampler.ShardedSampler`), so ranks may differ by one image: with the
upstream sync they then issue different numbers of collectives (gloo aborts, NCCL hangs) or lose
the extra image.

:class:`ShardedMeanAveragePrecision` gathers each rank's whole state in one ``all_gather_object``
and interleaves the ranks' images round-robin, longer ranks first in line as far as they go.
Under ``ShardedSampler`` (rank ``r`` holds images ``r, r + W, r + 2W, ...``) that is exactly the
dataset's order, so the gathered state equals the one of a single process, ties in detection
scores across images included.
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist
from torch import Tensor
from torchmetrics.detection import MeanAveragePrecision
from torchmetrics.utilities.data import apply_to_collection


class ShardedMeanAveragePrecision(MeanAveragePrecision):
    """:class:`~torchmetrics.detection.MeanAveragePrecision` that syncs per-rank image lists of any length."""

    def _sync_dist(self, dist_sync_fn: Any = None, process_group: Any = None) -> None:
        """Replace every per-image list state by the round-robin interleave of all ranks' lists."""
        names = list(self._defaults)
        # Pickled through CPU: a state holds tensors and, for masks, RLE tuples (bytes).
        local = {name: apply_to_collection(getattr(self, name), Tensor, lambda t: t.cpu()) for name in names}
        gathered: list[Any] = [None] * dist.get_world_size(group=process_group)
        dist.all_gather_object(gathered, local, group=process_group)
        for name in names:
            merged = interleave([ranks[name] for ranks in gathered])
            setattr(self, name, apply_to_collection(merged, Tensor, lambda t: t.to(self.device)))


def interleave(lists: list[list[Any]]) -> list[Any]:
    """``[a0, b0, c0, a1, b1, c1, a2, ...]`` of lists ``a, b, c`` of possibly different lengths."""
    longest = max((len(items) for items in lists), default=0)
    return [items[index] for index in range(longest) for items in lists if index < len(items)]
