"""Tiny deterministic encoders for tests that need the contracts, not real weights."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from findlit.encoders.base import STRIDES, TextEmbeddings, TextEncoder, VisionEncoder
from findlit.encoders.spec import EncoderSpec


class TinyVision(VisionEncoder):
    """Strided convolutions (with a batch norm, to test eval mode) giving res2..res5 of 8 channels."""

    def __init__(self, seed: int = 0, compute_dtype: str = "float32"):
        torch.manual_seed(seed)
        model = nn.ModuleDict(
            {
                "stem": nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), nn.BatchNorm2d(8), nn.Dropout(0.5)),
                "res3": nn.Conv2d(8, 8, 2, stride=2),
                "res4": nn.Conv2d(8, 8, 2, stride=2),
                "res5": nn.Conv2d(8, 8, 2, stride=2),
            }
        )
        super().__init__(model, compute_dtype)
        self.channels = dict.fromkeys(STRIDES, 8)

    def encode(self, images: Tensor) -> dict[str, Tensor]:
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
