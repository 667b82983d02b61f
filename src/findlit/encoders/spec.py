"""What identifies an encoder's output: its spec and the digest of its weights.

Caches key on the spec, and checkpoints store it instead of the encoder's weights, so two
encoders with equal specs must give equal outputs for equal inputs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class EncoderSpec:
    """Identity of a frozen encoder's output.

    Args:
        kind: ``"vision"`` or ``"text"``.
        name: registry name and model, e.g. ``"timm/tf_efficientnet_lite0"``.
        weights_digest: sha256 of the weights (see :func:`weights_digest`).
        input_size: vision: the side the encoder is run at (None: any size that is a multiple of 32);
            text: the maximum number of tokens.
        dtype: the compute dtype (``"float32"``, ``"bfloat16"``, ``"float16"``).
        options: anything else that changes the output (hidden layer, pooling, pyramid levels...).

    """

    kind: str
    name: str
    weights_digest: str
    input_size: int | None
    dtype: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (what checkpoints and cache manifests store)."""
        return json.loads(json.dumps(asdict(self), sort_keys=True, default=str))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EncoderSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(
            **{k: data[k] for k in ("kind", "name", "weights_digest", "input_size", "dtype")},
            options=dict(data.get("options", {})),
        )

    def fingerprint(self) -> str:
        """A short stable hash of the whole spec, for cache folder names."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def differences(self, other: EncoderSpec) -> list[str]:
        """The fields in which ``other`` differs, as ``"field: mine != theirs"`` lines."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [
            f"{key}: {mine[key]!r} != {theirs[key]!r}" for key in sorted(mine) if mine[key] != theirs.get(key)
        ]


def weights_digest(module: nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and bytes of every tensor of ``module``'s state dict.

    Independent of the file format the weights came from; two modules with equal weights have
    equal digests.
    """
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        value = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        # bfloat16 has no numpy dtype; hash its raw bytes through a same-size integer view
        raw = value.view(torch.int16) if value.dtype == torch.bfloat16 else value
        digest.update(raw.numpy().tobytes())
    return digest.hexdigest()
