"""FIND's optimiser and schedule: AdamW groups without decay on norms and embeddings, a stepped lr.

FIND (X-Decoder's detectron2 solver): AdamW, lr 1e-4, weight decay 0.05 except on norms, biases and
embeddings (``WEIGHT_DECAY_NORM: 0``, ``WEIGHT_DECAY_EMBED: 0`` in FIND's
``configs/find/focalt_unicl_lang.yaml``), a linear warmup then two steps down by ``gamma`` at
fractions of training, stepped per batch.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from findlit.interface.heads import LogitScale, NoObjectEmbedding

NO_DECAY_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.Embedding,
    LogitScale,
    NoObjectEmbedding,
)
"""Modules whose own parameters get no weight decay (norms, embeddings, the logit scale, no object)."""

NO_DECAY_NAMES: frozenset[str] = frozenset(
    {"bias", "embeddings", "positions", "level_embed", "logit_scale", "no_object", "pos_embed"}
)
"""A parameter gets no weight decay when one of the dotted parts of its name is one of these."""


def lr_factor(
    step: int,
    total_steps: float,
    warmup_steps: int = 10,
    milestones: tuple[float, float] = (0.89, 0.96),
    gamma: float = 0.1,
) -> float:
    """Learning-rate multiplier of optimiser step ``step`` (0-based).

    Linear warmup ``(step + 1) / warmup_steps`` over the first ``warmup_steps`` steps, then 1; times
    ``gamma`` from step ``int(milestones[0] * total_steps)`` on and ``gamma ** 2`` from
    ``int(milestones[1] * total_steps)`` on. With an infinite ``total_steps`` there is no step down.
    """
    factor = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    if math.isfinite(total_steps):
        for milestone in milestones:
            if step >= int(milestone * total_steps):
                factor *= gamma
    return factor


def parameter_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Split the trainable parameters into a decayed group and a group without weight decay.

    No decay (FIND's ``WEIGHT_DECAY_NORM: 0`` and ``WEIGHT_DECAY_EMBED: 0``, plus biases): parameters
    owned by a module of :data:`NO_DECAY_TYPES` (type rule), and parameters whose dotted name has a
    part in :data:`NO_DECAY_NAMES` (name rule: biases, the interface's learned ``embeddings`` and
    ``positions``, level embeddings, the logit scale and the no-object embedding). Every other
    trainable parameter (linear and convolution weights) decays. Frozen parameters are left out.

    Returns:
        ``[{"params": decayed, "weight_decay": weight_decay, "names": [...]},
        {"params": not decayed, "weight_decay": 0.0, "names": [...]}]``.

    """
    decay: dict[str, nn.Parameter] = {}
    no_decay: dict[str, nn.Parameter] = {}
    seen: set[int] = set()
    for module_name, child in module.named_modules():
        for name, parameter in child.named_parameters(recurse=False):
            if not parameter.requires_grad or id(parameter) in seen:
                continue
            seen.add(id(parameter))
            full = f"{module_name}.{name}" if module_name else name
            if isinstance(child, NO_DECAY_TYPES) or NO_DECAY_NAMES & set(full.split(".")):
                no_decay[full] = parameter
            else:
                decay[full] = parameter
    return [
        {"params": list(decay.values()), "weight_decay": weight_decay, "names": list(decay)},
        {"params": list(no_decay.values()), "weight_decay": 0.0, "names": list(no_decay)},
    ]
