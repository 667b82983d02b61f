"""The contracts of the frozen encoders and what "frozen" means.

A frozen encoder keeps the wrapped model *outside* the module tree: its parameters are not in
``parameters()`` (no optimiser can see them), not in ``state_dict()`` (checkpoints store the
:class:`~findlit.encoders.spec.EncoderSpec` instead), and ``train()`` never reaches them (they stay
in eval mode). Device and dtype moves (``.to()``, ``.cuda()``) still reach them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from findlit.encoders.spec import EncoderSpec, weights_digest

STRIDES: dict[str, int] = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
"""The pyramid every :class:`VisionEncoder` returns: level name -> stride."""

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


class FrozenEncoder(nn.Module):
    """Base of the encoders: holds a model that is never trained, saved or put in train mode.

    Args:
        model: the wrapped foundation model.
        compute_dtype: dtype of the forward pass (``float32``, ``bfloat16`` or ``float16``); outputs
            are returned in float32 whatever it is.

    """

    kind: ClassVar[str] = ""

    def __init__(self, model: nn.Module, compute_dtype: str = "float32"):
        super().__init__()
        if compute_dtype not in DTYPES:
            raise ValueError(f"compute_dtype must be one of {sorted(DTYPES)}, got {compute_dtype!r}")
        model.requires_grad_(False)
        model.eval()
        # Not registered as a submodule: see the module docstring.
        self._frozen: tuple[nn.Module] = (model,)
        self.compute_dtype = compute_dtype
        self._digest: str | None = None

    @property
    def model(self) -> nn.Module:
        """The wrapped model (frozen, eval mode)."""
        return self._frozen[0]

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> FrozenEncoder:
        super()._apply(fn, recurse)
        self.model._apply(fn, recurse)
        return self

    def train(self, mode: bool = True) -> FrozenEncoder:
        """Keep the wrapped model in eval mode whatever ``mode`` is (batch norm, dropout stay fixed)."""
        super().train(mode)
        self.model.eval()
        return self

    @property
    def device(self) -> torch.device:
        """Device of the wrapped model's weights."""
        first = next(iter(self.frozen_parameters()), None)
        return first.device if first is not None else torch.device("cpu")

    def frozen_parameters(self) -> Iterator[nn.Parameter]:
        """The wrapped model's parameters (for tests and accounting; never for an optimiser)."""
        return self.model.parameters()

    def weights_digest(self) -> str:
        """sha256 of the wrapped model's weights, computed once."""
        if self._digest is None:
            self._digest = weights_digest(self.model)
        return self._digest

    def autocast(self) -> Any:
        """Context for the forward pass in ``compute_dtype`` (no-op for float32)."""
        if self.compute_dtype == "float32":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=DTYPES[self.compute_dtype])

    @property
    def spec(self) -> EncoderSpec:
        """What identifies this encoder's output."""
        raise NotImplementedError


class VisionEncoder(FrozenEncoder):
    """A frozen image encoder that returns a feature pyramid.

    ``forward(images: float[B,3,H,W] in 0..1) -> {"res2": float[B,C2,H/4,W/4], ..., "res5":
    float[B,C5,H/32,W/32]}``; H and W must be multiples of 32. The encoder normalises the images
    itself. ``channels`` gives C per level.
    """

    kind = "vision"
    channels: dict[str, int]

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Encode images in 0..1 into the ``res2..res5`` pyramid (float32, no gradients)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images should be float[B,3,H,W], got shape {tuple(images.shape)}")
        if images.shape[-2] % 32 or images.shape[-1] % 32:
            raise ValueError(
                f"image height and width must be multiples of 32, got {tuple(images.shape[-2:])}"
            )
        with torch.no_grad(), self.autocast():
            features = self.encode(images)
        return {level: features[level].float() for level in STRIDES}

    def encode(self, images: Tensor) -> dict[str, Tensor]:
        """The adapter's forward pass: float[B,3,H,W] in 0..1 -> the ``res2..res5`` pyramid."""
        raise NotImplementedError


@dataclass
class TextEmbeddings:
    """What a :class:`TextEncoder` returns for T strings of at most L tokens.

    tokens: float[T,L,D], per-token hidden states (zero on padding).
    mask: bool[T,L], True on real tokens.
    sentence: float[T,D], one pooled vector per string.
    """

    tokens: Tensor
    mask: Tensor
    sentence: Tensor

    def __len__(self) -> int:
        return int(self.sentence.shape[0])

    def select(self, index: Sequence[int] | Tensor) -> TextEmbeddings:
        """The embeddings of the strings at ``index``."""
        rows = torch.as_tensor(index, dtype=torch.long, device=self.sentence.device)
        return TextEmbeddings(self.tokens[rows], self.mask[rows], self.sentence[rows])


class TextEncoder(FrozenEncoder):
    """A frozen text encoder; each string is encoded on its own (APE's independent prompts).

    ``forward(texts: list[str]) -> TextEmbeddings``; ``dim`` is D.
    """

    kind = "text"
    dim: int

    def forward(self, texts: Sequence[str]) -> TextEmbeddings:
        """Encode strings (float32 outputs, no gradients)."""
        if isinstance(texts, str):
            raise TypeError("texts should be a list of strings, not one string")
        with torch.no_grad(), self.autocast():
            embeddings = self.encode(list(texts))
        mask = embeddings.mask.bool()
        tokens = embeddings.tokens.float() * mask.unsqueeze(-1)
        return TextEmbeddings(tokens=tokens, mask=mask, sentence=embeddings.sentence.float())

    def encode(self, texts: list[str]) -> TextEmbeddings:
        """The adapter's forward pass."""
        raise NotImplementedError
