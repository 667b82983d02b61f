"""Seeded draws of a task: what a batch's sample seeds fix (strokes, points, rounds).

A sample's seed is the sampler's per-sample seed in training and the record index in evaluation
(:class:`~findlit.data.sample.Sample`), so whatever is drawn from it follows the sample, not the
rank or the batch it lands in, and evaluation draws the same strokes and points at every run.
"""

from __future__ import annotations

import numpy as np
import torch

from findlit.data.collate import Batch


def batch_seeds(batch: Batch) -> list[int]:
    """The images' sample seeds (their ids when the batch has none)."""
    return [int(s) for s in (batch.get("sample_seeds") or batch["image_ids"])]


def batch_rng(batch: Batch) -> np.random.Generator:
    """One generator for batch-level draws (e.g. the number of click rounds), from the sample seeds."""
    return np.random.default_rng(batch_seeds(batch))


def points_generator(batch: Batch, round_index: int) -> torch.Generator:
    """A CPU generator for one forward's visual-prompt points, fixed by the batch's seeds and the round.

    FIND draws them unseeded; seeding keeps evaluation repeatable (and training reproducible).
    """
    seed = int(np.random.SeedSequence([*batch_seeds(batch), round_index]).generate_state(1)[0])
    return torch.Generator().manual_seed(seed)
