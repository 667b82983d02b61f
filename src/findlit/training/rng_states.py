"""The global random generators are saved in checkpoints and restored when a fit resumes.

Training may draw from the global generators (dropout, when the interface has any; the mask
losses' random points of a batch without ``sample_seeds``, i.e. not built by the datasets: those of
dataset batches come from each sample's own seed, see :mod:`findlit.losses.points`), so a resumed
run equals an uninterrupted one only if those generators continue where the checkpoint left them.
Lightning restores weights, optimisers, schedulers and loops, but not these generators: the
:class:`RestoreRNGStates` callback does (torch's CPU and CUDA generators, numpy's and Python's).

The states are stored as tensors, ints and tuples, so the checkpoint still loads with
``weights_only=True`` (numpy's state is an array, which torch's safe unpickler refuses, hence the
conversion).

*When* they are restored matters as much as *what*. A checkpoint taken after training batch ``k``
records the generators at that moment; in the uninterrupted run, batch ``k + 1`` draws next. A
resumed run does more before that batch: a DataLoader draws two numbers from the global generators
each time an iterator is created, and a run resumed mid-epoch creates one where the uninterrupted run
did not. So the states are set when the resumed epoch starts (a new epoch's iterator then draws what
the uninterrupted run's drew: checkpoints taken at the end of an epoch, after its validation) and,
when the run resumed mid-epoch, set again right before its first training batch (undoing the extra
iterator's draws). Lightning's sanity check is skipped on resume and isolated from the generators.

Not exact: a checkpoint taken after an epoch's last training batch but before that epoch's
validation (``every_n_train_steps`` landing on the epoch's end). Lightning resumes such a run in the
next epoch without running the skipped validation, so the generators (and the metrics log) cannot
follow the uninterrupted run; the states are then set before the first training batch.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L  # noqa: N812
import numpy as np
import torch

RNGStates = dict[str, Any]
"""Generator states as checkpoint-safe data: tensors, ints, floats and tuples of them."""


def collect_rng_states() -> RNGStates:
    """The states of the global torch (CPU and initialised CUDA), numpy and Python generators."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    states: RNGStates = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: RNGStates) -> None:
    """Set the global generators to ``states`` (from :func:`collect_rng_states`)."""
    torch.set_rng_state(states["torch"])
    numpy = states["numpy"]
    np.random.set_state(
        (
            numpy["kind"],
            numpy["keys"].numpy().astype(np.uint32),
            numpy["position"],
            numpy["has_gauss"],
            numpy["cached_gaussian"],
        )
    )
    version, internal, gauss_next = states["python"]
    # a checkpoint may give lists where random.getstate gave tuples
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class RestoreRNGStates(L.Callback):
    """Saves the global generator states in checkpoints; restores them when a fit resumes.

    Exact in one process. Under DDP the checkpoint holds rank 0's states (the file is written by rank
    0), and every rank restores those.
    """

    def __init__(self) -> None:
        self._pending: RNGStates | None = None
        self._set_at_epoch_start = False

    def state_dict(self) -> dict[str, Any]:
        """The generator states now (Lightning calls this while it builds a checkpoint)."""
        return collect_rng_states()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep the checkpoint's states until training resumes (see the module doc)."""
        self._pending = dict(state_dict)
        self._set_at_epoch_start = False

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Set the saved states before the resumed epoch creates its data iterator."""
        if self._pending is not None:
            set_rng_states(self._pending)
            self._set_at_epoch_start = True

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Set them again when the run resumed mid-epoch (its fresh iterator drew extra numbers)."""
        if self._pending is None:
            return
        # Lightning calls no on_train_epoch_start when it resumes in the epoch after a checkpoint
        # taken at the previous one's last batch
        if batch_idx > 0 or not self._set_at_epoch_start:
            set_rng_states(self._pending)
        self._pending = None

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Forget states a run did not use (the callback may serve several runs in one process)."""
        self._pending = None
        self._set_at_epoch_start = False
