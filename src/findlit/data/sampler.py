"""Samplers: the interleaving multi-task training sampler and the unpadded evaluation shards.

Training batches are task-homogeneous; which dataset feeds each step is drawn by the datasets'
ratios (APE's dataset ratios) from a generator seeded by (seed, epoch), so every rank draws the
same task sequence. Each dataset is consumed as a stream of per-epoch permutations; a global
batch of ``batch_size * world_size`` consecutive stream positions is split by rank, so ranks see
disjoint samples that together cover the stream. Every sample also gets its own seed from its
stream position (not from the rank), so augmentations do not depend on the number of processes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

SampleKey = tuple[int, int, int]
"""``(dataset position, record index, sample seed)`` as yielded by :class:`MultiTaskBatchSampler`."""


def mix_seed(*parts: int) -> int:
    """A 63-bit seed mixed from non-negative integers (stable across runs and platforms)."""
    return int(
        np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1)
    )


class MultiTaskBatchSampler(Sampler[list[SampleKey]]):
    """Yields task-homogeneous batches of :data:`SampleKey` interleaved by ratio.

    Args:
        sizes: number of records of each training dataset.
        batch_sizes: per-rank batch size of each dataset.
        ratios: relative sampling frequency of each dataset (normalised; need not sum to 1).
        steps_per_epoch: batches per epoch; default: enough for each dataset's records to be seen
            about once at its batch size, ``sum(size // (batch_size * world_size))`` (at least 1).
        seed: the run's seed; the task sequence depends on (seed, epoch) only.
        rank, world_size: this process's rank among ``world_size`` data-parallel processes.

    """

    def __init__(
        self,
        sizes: Sequence[int],
        batch_sizes: Sequence[int],
        ratios: Sequence[float],
        *,
        steps_per_epoch: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if not (len(sizes) == len(batch_sizes) == len(ratios)) or not sizes:
            raise ValueError("sizes, batch_sizes and ratios need one entry per dataset")
        if any(size <= 0 for size in sizes):
            raise ValueError(f"every training dataset needs records, got sizes {list(sizes)}")
        if any(b <= 0 for b in batch_sizes) or any(r < 0 for r in ratios) or sum(ratios) <= 0:
            raise ValueError("batch sizes must be positive and ratios non-negative with a positive sum")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.sizes = list(sizes)
        self.batch_sizes = list(batch_sizes)
        self.probabilities = torch.tensor(ratios, dtype=torch.float64) / sum(ratios)
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        default_steps = sum(size // (b * world_size) for size, b in zip(sizes, batch_sizes, strict=True))
        self.steps_per_epoch = steps_per_epoch if steps_per_epoch is not None else max(1, default_steps)
        if self.steps_per_epoch <= 0:
            raise ValueError(f"steps_per_epoch must be positive, got {self.steps_per_epoch}")
        self.epoch = 0
        self.start_step = 0
        self.yielded = 0

    def __len__(self) -> int:
        # The whole epoch, even when resuming inside it: Lightning counts the restored batches itself.
        return self.steps_per_epoch

    @property
    def sampler(self) -> MultiTaskBatchSampler:
        """This sampler: Lightning calls ``set_epoch`` on ``batch_sampler.sampler`` at each epoch start."""
        return self

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch; a resume position kept for another epoch is dropped."""
        if epoch != self.epoch:
            self.start_step = 0
        self.epoch = epoch

    def task_sequence(self, epoch: int) -> torch.Tensor:
        """The dataset position drawn for each step of ``epoch``: int64[steps_per_epoch]."""
        generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
        return torch.multinomial(
            self.probabilities, self.steps_per_epoch, replacement=True, generator=generator
        )

    def __iter__(self) -> Iterator[list[SampleKey]]:
        epoch, start = self.epoch, self.start_step
        sequence = self.task_sequence(epoch).tolist()
        # Stream positions already used by the steps before `start` (the resume point).
        positions = [0] * len(self.sizes)
        for dataset in sequence[:start]:
            positions[dataset] += self.batch_sizes[dataset] * self.world_size
        streams = [_PermutationStream(size, self.seed, epoch, d) for d, size in enumerate(self.sizes)]
        self.yielded = start
        for dataset in sequence[start:]:
            per_rank = self.batch_sizes[dataset]
            first = positions[dataset] + self.rank * per_rank
            positions[dataset] += per_rank * self.world_size
            batch = [
                (dataset, streams[dataset].index(p), mix_seed(self.seed, epoch, dataset, p))
                for p in range(first, first + per_rank)
            ]
            self.yielded += 1
            yield batch
        # A finished epoch leaves no resume point behind.
        self.start_step = 0

    def state_dict(self) -> dict[str, Any]:
        """Position after the batches yielded so far (use the consumed count when prefetching)."""
        return {"seed": self.seed, "epoch": self.epoch, "step": self.yielded}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``: the next batch is the one that followed it in the original run."""
        if int(state["seed"]) != self.seed:
            raise ValueError(f"sampler state was saved with seed {state['seed']}, this run uses {self.seed}")
        step = int(state["step"])
        if not 0 <= step <= self.steps_per_epoch:
            raise ValueError(f"sampler state step {step} is outside [0, {self.steps_per_epoch}]")
        self.epoch = int(state["epoch"])
        self.start_step = step
        self.yielded = step


class _PermutationStream:
    """Concatenated permutations of ``range(size)``; cycle c is drawn from (seed, epoch, dataset, c)."""

    def __init__(self, size: int, seed: int, epoch: int, dataset: int):
        self.size, self.seed, self.epoch, self.dataset = size, seed, epoch, dataset
        self._cycle = -1
        self._permutation: list[int] = []

    def index(self, position: int) -> int:
        cycle, offset = divmod(position, self.size)
        if cycle != self._cycle:
            generator = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, self.dataset, cycle))
            self._permutation = torch.randperm(self.size, generator=generator).tolist()
            self._cycle = cycle
        return self._permutation[offset]


class ShardedSampler(Sampler[int]):
    """Evaluation indices ``rank, rank + world_size, ...``: disjoint, covering, never padded.

    Unlike ``DistributedSampler`` no index is repeated to even out the shards, so gathered
    metrics count every sample exactly once.
    """

    def __init__(self, size: int, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.size, self.rank, self.world_size = size, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world_size))
