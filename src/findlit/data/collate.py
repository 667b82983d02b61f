"""Collating samples into the batch contract of the design.

Images are padded (bottom and right) to a common size, rounded up to a multiple of
``size_divisibility`` so every level of a stride-32 pyramid has whole pixels; masks are padded
the same way so they stay aligned with the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypedDict

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from findlit.data.sample import Sample

_PER_IMAGE_META = ("task", "dataset", "image_id", "image", "orig_size")


class Batch(TypedDict):
    """A task-homogeneous batch of B images padded to H x W.

    images: uint8[B,3,H,W] (the encoders convert to float in 0..1 and normalise).
    padding_mask: bool[B,H,W], True on padded pixels.
    image_sizes: (h, w) of each image after transforms, before padding.
    orig_sizes: (h, w) of each image on disk.
    targets: per-image dicts with the task's keys of :class:`Sample` (``masks`` bool[N,H,W]
    padded with False, ``ignore_mask`` bool[H,W] padded with True, ``labels``, ``captions``,
    ``sentences``, ``entities``...).
    """

    task: str
    dataset: str
    images: Tensor
    padding_mask: Tensor
    image_ids: list[int]
    image_sizes: list[tuple[int, int]]
    orig_sizes: list[tuple[int, int]]
    targets: list[dict[str, Any]]


def collate_samples(samples: Sequence[Sample], size_divisibility: int = 32) -> Batch:
    """Stack a list of samples of one task and dataset into a :class:`Batch` (any batch size >= 1)."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    tasks = {sample["task"] for sample in samples}
    datasets = {sample["dataset"] for sample in samples}
    if len(tasks) != 1 or len(datasets) != 1:
        raise ValueError(
            f"a batch must hold one task and one dataset, got tasks {tasks} and datasets {datasets}"
        )
    sizes = [(int(s["image"].shape[1]), int(s["image"].shape[2])) for s in samples]
    height = _round_up(max(h for h, _ in sizes), size_divisibility)
    width = _round_up(max(w for _, w in sizes), size_divisibility)
    images = torch.zeros(len(samples), 3, height, width, dtype=samples[0]["image"].dtype)
    padding_mask = torch.ones(len(samples), height, width, dtype=torch.bool)
    targets = []
    for row, (sample, (h, w)) in enumerate(zip(samples, sizes, strict=True)):
        images[row, :, :h, :w] = sample["image"]
        padding_mask[row, :h, :w] = False
        target: dict[str, Any] = {k: v for k, v in sample.items() if k not in _PER_IMAGE_META}
        if "masks" in target:
            target["masks"] = _pad(target["masks"], height, width, value=False)
        if "ignore_mask" in target:
            target["ignore_mask"] = _pad(target["ignore_mask"], height, width, value=True)
        targets.append(target)
    return Batch(
        task=samples[0]["task"],
        dataset=samples[0]["dataset"],
        images=images,
        padding_mask=padding_mask,
        image_ids=[int(s["image_id"]) for s in samples],
        image_sizes=sizes,
        orig_sizes=[tuple(s["orig_size"]) for s in samples],  # type: ignore[misc]
        targets=targets,
    )


def _pad(tensor: Tensor, height: int, width: int, value: bool) -> Tensor:
    """Pad the last two dims of bool[..., h, w] on the bottom and right to ``height`` x ``width``."""
    pad_h, pad_w = height - tensor.shape[-2], width - tensor.shape[-1]
    if pad_h == 0 and pad_w == 0:
        return tensor
    return F.pad(tensor, (0, pad_w, 0, pad_h), value=value)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple if multiple > 1 else value
