"""Checkpoints record encoder specs, not encoder weights, and loading checks them.

A LightningModule holding frozen encoders calls :func:`record_encoder_specs` in
``on_save_checkpoint`` and :func:`check_encoder_specs` in ``on_load_checkpoint``: the encoders are
rebuilt from the config, and a checkpoint trained on other encoder weights is refused instead of
silently pairing an interface with features it never saw.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from findlit.encoders.base import FrozenEncoder
from findlit.encoders.spec import EncoderSpec
from findlit.errors import CheckpointError

CHECKPOINT_KEY = "findlit_encoder_specs"


class EncoderMismatchError(CheckpointError, RuntimeError):
    """The encoders of a checkpoint differ from the ones this run built."""


def frozen_encoders(module: nn.Module) -> dict[str, FrozenEncoder]:
    """Every frozen encoder inside ``module``, by attribute path (``""`` for ``module`` itself)."""
    return {name: child for name, child in module.named_modules() if isinstance(child, FrozenEncoder)}


def encoder_specs(module: nn.Module) -> dict[str, dict[str, Any]]:
    """The spec of every frozen encoder in ``module`` as JSON-able dicts, by attribute path."""
    return {name: encoder.spec.to_dict() for name, encoder in frozen_encoders(module).items()}


def record_encoder_specs(checkpoint: dict[str, Any], module: nn.Module) -> None:
    """Store the encoder specs in a checkpoint dict (``on_save_checkpoint``)."""
    checkpoint[CHECKPOINT_KEY] = encoder_specs(module)


def check_encoder_specs(checkpoint: Mapping[str, Any], module: nn.Module) -> None:
    """Compare a checkpoint's encoder specs with ``module``'s encoders (``on_load_checkpoint``).

    Raises:
        EncoderMismatchError: an encoder is missing, extra, or differs (weights digest, dtype,
            options...); the message lists every difference, on one line.

    """
    saved = checkpoint.get(CHECKPOINT_KEY)
    if saved is None:
        raise EncoderMismatchError(f"the checkpoint has no '{CHECKPOINT_KEY}': it was not written by findlit")
    current = frozen_encoders(module)
    problems = [
        f"encoder '{name}' is in the checkpoint but not in this model"
        for name in sorted(set(saved) - set(current))
    ]
    problems += [
        f"encoder '{name}' is in this model but not in the checkpoint"
        for name in sorted(set(current) - set(saved))
    ]
    for name in sorted(set(saved) & set(current)):
        differences = EncoderSpec.from_dict(saved[name]).differences(current[name].spec)
        problems += [f"encoder '{name}' {difference} (checkpoint != this run)" for difference in differences]
    if problems:
        # one line (the command prints errors as one): the differences joined by "; "
        raise EncoderMismatchError("the checkpoint's encoders differ from this run's: " + "; ".join(problems))
