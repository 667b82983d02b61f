"""A tiny deterministic VisionEncoder for the feature cache tests (registered as ``tiny_test_vision``)."""

from __future__ import annotations

import itertools
import os
import signal

import torch
from torch import Tensor, nn

from findlit.encoders.base import VisionEncoder
from findlit.encoders.registry import register
from findlit.encoders.spec import EncoderSpec

CHANNELS = {"res2": 4, "res3": 6, "res4": 8, "res5": 10}


class EncoderInterruptedError(RuntimeError):
    """Raised by the encoder on the call it was told to fail on."""


@register("tiny_test_vision")
class TinyVisionEncoder(VisionEncoder):
    """Four strided convolutions with weights drawn from ``seed``; counts its calls.

    Args:
        seed: weights seed (part of the spec through the weights digest).
        fail_on_call: raise :class:`EncoderInterruptedError` on this call (1-based): an interruption.
        kill_on_call: SIGKILL the process on this call, to simulate a killed writer.

    """

    def __init__(self, seed: int = 0, fail_on_call: int | None = None, kill_on_call: int | None = None):
        generator = torch.Generator().manual_seed(seed)
        sizes = [3, *CHANNELS.values()]
        model = nn.ModuleList(
            nn.Conv2d(c_in, c_out, kernel_size=3, stride=4 if i == 0 else 2, padding=1)
            for i, (c_in, c_out) in enumerate(itertools.pairwise(sizes))
        )
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
        super().__init__(model)
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
        features = {}
        x = images
        for level, layer in zip(CHANNELS, self.model, strict=True):
            x = torch.tanh(layer(x)) * 3.0
            features[level] = x
        return features

    @property
    def spec(self) -> EncoderSpec:
        return EncoderSpec(
            kind="vision",
            name="test/tiny",
            weights_digest=self.weights_digest(),
            input_size=None,
            dtype=self.compute_dtype,
        )
