"""Collating samples into the batch contract of the design.

Images are padded (bottom and right) to a common size, rounded up to a multiple of
``size_divisibility`` so every level of a stride-32 pyramid has whole pixels; masks are padded
the same way so they stay aligned with the image. Samples read from a feature cache carry
``features`` instead of an image: every level is padded with zeros to the batch's frame, in step
with the masks and the padding mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypedDict

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from findlit.data.sample import Sample

if TYPE_CHECKING:
    from findlit.data.predict_config import PredictRequest

_PER_IMAGE_META = (
    "task",
    "dataset",
    "image_id",
    "seed",
    "image",
    "orig_size",
    "features",
    "image_size",
    "padding_mask",
)


class _BatchFields(TypedDict):
    task: str
    dataset: str
    padding_mask: Tensor
    image_ids: list[int]
    image_sizes: list[tuple[int, int]]
    orig_sizes: list[tuple[int, int]]
    targets: list[dict[str, Any]]


class Batch(_BatchFields, total=False):
    """A task-homogeneous batch of B images padded to H x W; exactly one of ``images`` and ``features``.

    images: uint8[B,3,H,W] (the encoders convert to float in 0..1 and normalise).
    sample_seeds: each sample's ``seed`` (when every sample has one, as the datasets' do): the
    losses seed each image's random points with it, so they do not depend on the batch or rank.
    features: instead of ``images`` for a dataset read from a feature cache: level (``res2``..
    ``res5``) -> float16[B,C_l,H/s_l,W/s_l] (the cache dtype; cast before use), zero beyond each
    image's own padded frame.
    padding_mask: bool[B,H,W], True on padded pixels (for flipped cached features, also on the left).
    image_sizes: (h, w) of each image after transforms, before padding (top left, except for
    flipped cached features, whose image sits at the right of its own padded frame).
    orig_sizes: (h, w) of each image on disk.
    targets: per-image dicts with the task's keys of :class:`Sample` (``masks`` bool[N,H,W]
    padded with False, ``ignore_mask`` bool[H,W] padded with True, ``labels``, ``captions``,
    ``sentences``, ``entities``...; for prediction batches ``file`` and ``pixels``).
    request: in prediction batches (task ``predict``, :func:`~findlit.data.predict_dataset.collate_predict`),
    what to predict on every image.
    """

    images: Tensor
    features: dict[str, Tensor]
    sample_seeds: list[int]
    request: PredictRequest


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
    cached = ["features" in s for s in samples]
    if any(cached) and not all(cached):
        raise ValueError("a batch cannot mix samples with images and samples with cached features")
    if all(cached):
        # Each sample is already in its padded frame (padding_mask's size); pad to the largest.
        frames = [(int(s["padding_mask"].shape[0]), int(s["padding_mask"].shape[1])) for s in samples]
        sizes = [(int(s["image_size"][0]), int(s["image_size"][1])) for s in samples]
    else:
        frames = sizes = [(int(s["image"].shape[1]), int(s["image"].shape[2])) for s in samples]
    # the frame is at least every sample's ``frame`` (large-scale jitter's crop square)
    least = [sample.get("frame", (0, 0)) for sample in samples]
    height = _round_up(max(max(h for h, _ in frames), *(h for h, _ in least)), size_divisibility)
    width = _round_up(max(max(w for _, w in frames), *(w for _, w in least)), size_divisibility)
    padding_mask = torch.ones(len(samples), height, width, dtype=torch.bool)
    targets = []
    for row, (sample, (h, w)) in enumerate(zip(samples, frames, strict=True)):
        if "padding_mask" in sample:
            padding_mask[row, :h, :w] = sample["padding_mask"]
        else:
            padding_mask[row, :h, :w] = False
        target: dict[str, Any] = {k: v for k, v in sample.items() if k not in _PER_IMAGE_META}
        if "masks" in target:
            target["masks"] = _pad(target["masks"], height, width, value=False)
        if "ignore_mask" in target:
            target["ignore_mask"] = _pad(target["ignore_mask"], height, width, value=True)
        targets.append(target)
    batch = Batch(
        task=samples[0]["task"],
        dataset=samples[0]["dataset"],
        padding_mask=padding_mask,
        image_ids=[int(s["image_id"]) for s in samples],
        image_sizes=sizes,
        orig_sizes=[tuple(s["orig_size"]) for s in samples],  # type: ignore[misc]
        targets=targets,
    )
    if all("seed" in s for s in samples):
        batch["sample_seeds"] = [int(s["seed"]) for s in samples]
    if all(cached):
        batch["features"] = _stack_features(samples, frames, height, width)
    else:
        images = torch.zeros(len(samples), 3, height, width, dtype=samples[0]["image"].dtype)
        for row, (sample, (h, w)) in enumerate(zip(samples, frames, strict=True)):
            images[row, :, :h, :w] = sample["image"]
        batch["images"] = images
    return batch


def _stack_features(
    samples: Sequence[Sample], frames: Sequence[tuple[int, int]], height: int, width: int
) -> dict[str, Tensor]:
    """Per level, float[B,C,height/s,width/s]: each sample's [C,H_i/s,W_i/s] top left, zeros elsewhere."""
    out: dict[str, Tensor] = {}
    for level, first in samples[0]["features"].items():
        stride = frames[0][0] // int(first.shape[-2])
        stacked = first.new_zeros(len(samples), int(first.shape[0]), height // stride, width // stride)
        for row, (sample, (h, w)) in enumerate(zip(samples, frames, strict=True)):
            value = sample["features"][level]
            if (int(value.shape[-2]) * stride, int(value.shape[-1]) * stride) != (h, w):
                raise ValueError(
                    f"sample {sample['image_id']}: features {level} {tuple(value.shape)} do not cover its "
                    f"{h}x{w} frame at stride {stride}"
                )
            stacked[row, :, : h // stride, : w // stride] = value
        out[level] = stacked
    return out


def _pad(tensor: Tensor, height: int, width: int, value: bool) -> Tensor:
    """Pad the last two dims of bool[..., h, w] on the bottom and right to ``height`` x ``width``."""
    pad_h, pad_w = height - tensor.shape[-2], width - tensor.shape[-1]
    if pad_h == 0 and pad_w == 0:
        return tensor
    return F.pad(tensor, (0, pad_w, 0, pad_h), value=value)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple if multiple > 1 else value


def image_targets(batch: Batch, b: int) -> dict[str, Tensor]:
    """Image ``b``'s targets to score its predictions against (those of the keys it has).

    Its ``original`` ones (decoded, at the image's size on disk) when it has them, as evaluation
    datasets give; else its padded ``masks`` and ``ignore_mask`` cropped to the image
    (``image_sizes``, from the origin of its padding mask), with ``labels`` and ``iscrowd``.
    """
    target = batch["targets"][b]
    if "original" in target:
        return dict(target["original"])
    top, left = image_origin(batch["padding_mask"][b])
    h, w = (int(n) for n in batch["image_sizes"][b])
    cropped: dict[str, Tensor] = {
        key: target[key][..., top : top + h, left : left + w]
        for key in ("masks", "ignore_mask")
        if key in target
    }
    cropped |= {key: target[key] for key in ("labels", "iscrowd") if key in target}
    return cropped


def image_origin(padding_mask: Tensor) -> tuple[int, int]:
    """(top, left) of an image in its padded frame, from its bool[H,W] padding mask (True = padding).

    The first unpadded row and column; (0, 0) when the mask has no unpadded pixel.
    """
    valid = ~padding_mask
    rows = valid.any(dim=1).nonzero()
    cols = valid.any(dim=0).nonzero()
    if rows.numel() == 0 or cols.numel() == 0:
        return 0, 0
    return int(rows[0]), int(cols[0])
