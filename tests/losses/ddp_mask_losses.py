"""Run by test_seeded_points: 2 CPU processes (gloo) take the mask losses of one image each.

The batch of two images is built alike in every process; rank r computes the segmentation and
grounding losses of image r (with the image's seed, so its random points are those of the whole
batch in one process), backpropagates, averages the gradients over ranks as DDP does, and rank 0
saves them. The images' target counts differ (segmentation: 3 and 1 masks; grounding: 1 and 0
sentences), so per-rank normalisers would weigh the ranks unequally.

Usage: python ddp_mask_losses.py <out_file> <port>
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from findlit.losses import HungarianMatcher, PointSampling, grounding_losses, segmentation_losses

WORLD = 2
SIZE = 16
QUERIES = 4
LAYERS = 2
CLASSES = 3
SEEDS = (1234, 98765)
POINTS = 24


class Predictions(nn.Module):
    """Per-layer predictions of a batch of two images as parameters: what an interface would output."""

    def __init__(self) -> None:
        super().__init__()
        self.masks = nn.Parameter(torch.randn(LAYERS, WORLD, QUERIES, SIZE, SIZE))
        self.classes = nn.Parameter(torch.randn(LAYERS, WORLD, QUERIES, CLASSES + 1))
        self.similarity = nn.Parameter(torch.randn(LAYERS, WORLD, QUERIES, 1))


def _blob(y: int, x: int, side: int) -> Tensor:
    mask = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    mask[y : y + side, x : x + side] = True
    return mask


def build() -> tuple[Predictions, list[dict[str, Tensor]], list[dict[str, Tensor]], Tensor]:
    """The same predictions and targets in every process: (predictions, segmentation, grounding, valid)."""
    torch.manual_seed(0)
    segmentation = [
        {
            "labels": torch.tensor([0, 2, 1]),
            "masks": torch.stack([_blob(1, 1, 6), _blob(8, 3, 7), _blob(2, 9, 5)]),
        },
        {"labels": torch.tensor([1]), "masks": _blob(4, 4, 9)[None]},
    ]
    grounding = [
        {"masks": _blob(3, 2, 8)[None]},
        {"masks": torch.zeros(0, SIZE, SIZE, dtype=torch.bool)},
    ]
    sentence_valid = torch.tensor([[True], [False]])
    return Predictions(), segmentation, grounding, sentence_valid


def losses(model: Predictions, rows: slice, built: Sequence[Any]) -> Tensor:
    """Segmentation + grounding losses of the images ``rows`` of the batch, points seeded per image."""
    _, segmentation, grounding, sentence_valid = built
    matcher = HungarianMatcher(num_points=POINTS)
    sampling = PointSampling(num_points=POINTS)
    seeds = list(SEEDS[rows])
    seg, _ = segmentation_losses(
        list(model.classes[:, rows]),
        list(model.masks[:, rows]),
        segmentation[rows],
        matcher,
        CLASSES,
        sampling=sampling,
        seeds=seeds,
    )
    ground, _ = grounding_losses(
        list(model.similarity[:, rows]),
        list(model.masks[:, rows]),
        sentence_valid[rows],
        grounding[rows],
        matcher,
        sampling=sampling,
        seeds=seeds,
    )
    return seg + ground


def grads(model: nn.Module) -> dict[str, Tensor]:
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


def worker(rank: int, port: int, out: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        built = build()
        model = built[0]
        losses(model, slice(rank, rank + 1), built).backward()
        averaged = grads(model)
        for grad in averaged.values():  # what DDP does
            dist.all_reduce(grad)
            grad /= WORLD
        if rank == 0:
            torch.save(averaged, out)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    torch.multiprocessing.spawn(worker, args=(int(sys.argv[2]), sys.argv[1]), nprocs=WORLD)
