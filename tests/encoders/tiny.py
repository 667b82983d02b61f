"""Tiny deterministic encoders for tests that need the contracts, not real weights.

:class:`TinyVision` is registered as ``tiny_test_vision`` (importing this module registers it), so
configs can build it by name, e.g. in ``findlit cache``.
"""

from __future__ import annotations

import os
import signal

import torch
from torch import Tensor, nn

from findlit.encoders.base import TextEmbeddings, TextEncoder, VisionEncoder
from findlit.encoders.registry import register
from findlit.encoders.spec import EncoderSpec

CHANNELS = {"res2": 4, "res3": 6, "res4": 8, "res5": 10}
"""Channels of TinyVision's levels, all different so a mixed-up level shows."""


class EncoderInterruptedError(RuntimeError):
    """Raised by the encoder on the call it was told to fail on."""


@register("tiny_test_vision")
class TinyVision(VisionEncoder):
    """Strided convolutions giving res2..res5 of :data:`CHANNELS`, with weights drawn from ``seed``.

    The stem has a batch norm and a dropout, to test that the frozen model stays in eval mode. The
    encoder counts its calls and images, and can be told to fail or to kill its process.

    Args:
        seed: weights seed (part of the spec through the weights digest); the global RNG is untouched.
        compute_dtype: dtype of the forward pass.
        fail_on_call: raise :class:`EncoderInterruptedError` on this call (1-based): an interruption.
        kill_on_call: SIGKILL the process on this call, to simulate a killed writer.

    """

    def __init__(
        self,
        seed: int = 0,
        compute_dtype: str = "float32",
        fail_on_call: int | None = None,
        kill_on_call: int | None = None,
    ):
        res2, res3, res4, res5 = CHANNELS.values()
        model = nn.ModuleDict(
            {
                "stem": nn.Sequential(nn.Conv2d(3, res2, 4, stride=4), nn.BatchNorm2d(res2), nn.Dropout(0.5)),
                "res3": nn.Conv2d(res2, res3, 2, stride=2),
                "res4": nn.Conv2d(res3, res4, 2, stride=2),
                "res5": nn.Conv2d(res4, res5, 2, stride=2),
            }
        )
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for parameter in model.parameters():
                # Features of order 0.1..1: far above float16's rounding, close in bfloat16 compute.
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
        super().__init__(model, compute_dtype)
        self.channels = dict(CHANNELS)
        self.seed = seed
        self.fail_on_call = fail_on_call
        self.kill_on_call = kill_on_call
        self.calls = 0
        self.images = 0

    def encode(self, images: Tensor) -> dict[str, Tensor]:
        self.calls += 1
        self.images += images.shape[0]
        if self.calls == self.fail_on_call:
            raise EncoderInterruptedError(f"interrupted on call {self.calls}")
        if self.calls == self.kill_on_call:
            os.kill(os.getpid(), signal.SIGKILL)
        res2 = self.model["stem"](images)
        res3 = self.model["res3"](res2)
        res4 = self.model["res4"](res3)
        return {"res2": res2, "res3": res3, "res4": res4, "res5": self.model["res5"](res4)}

    @property
    def spec(self) -> EncoderSpec:
        return EncoderSpec("vision", "test/tiny", self.weights_digest(), None, self.compute_dtype)


class TinyText(TextEncoder):
    """Characters -> embeddings; the sentence vector is their mean."""

    def __init__(self, seed: int = 0, dim: int = 6):
        torch.manual_seed(seed)
        super().__init__(nn.Embedding(128, dim))
        self.dim = dim
        self.calls: list[list[str]] = []

    def encode(self, texts: list[str]) -> TextEmbeddings:
        self.calls.append(texts)
        length = max((len(t) for t in texts), default=0)
        ids = torch.zeros(len(texts), length, dtype=torch.long)
        mask = torch.zeros(len(texts), length, dtype=torch.bool)
        for row, text in enumerate(texts):
            ids[row, : len(text)] = torch.tensor([min(ord(c), 127) for c in text], dtype=torch.long)
            mask[row, : len(text)] = True
        tokens = self.model(ids)
        sentence = (tokens * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return TextEmbeddings(tokens, mask, sentence)

    @property
    def spec(self) -> EncoderSpec:
        return EncoderSpec("text", "test/chars", self.weights_digest(), None, self.compute_dtype)
