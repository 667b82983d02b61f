"""The trainable pixel decoder over the frozen ``res2..res5`` pyramid, and sine positional encodings.

An FPN in the manner of Mask2Former's ``BasePixelDecoder`` / ``TransformerEncoderPixelDecoder``
(no deformable attention):

- res5 is projected to ``hidden_dim`` (1x1 conv + GroupNorm) and, optionally, refined by a few
  post-norm transformer-encoder layers with sine positions (global context where it is cheapest:
  at stride 32 there are ``H*W/1024`` tokens). Default: one layer, to stay light;
- top-down: each finer level is a lateral 1x1 conv (+ GroupNorm) of the frozen feature plus the
  nearest-upsampled coarser output, followed by a 3x3 conv + GroupNorm + ReLU;
- the stride-4 output goes through a 3x3 conv to ``mask_dim``: the mask features.

The outputs at strides 32, 16, 8 are the levels the decoder's cross-attention visits round-robin
(coarse first, as Mask2Former). Their positional encodings and a learned embedding per level
(added to the keys' *content*, as Mask2Former's ``level_embed``) come with them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from findlit.encoders.base import STRIDES
from findlit.interface.layers import FFNLayer, SelfAttentionLayer

LEVELS: tuple[str, ...] = ("res5", "res4", "res3")
"""Pyramid levels the decoder cross-attends to, in round-robin order (strides 32, 16, 8)."""


class PositionEmbeddingSine(nn.Module):
    """DETR's sine positional encoding, normalised to the image extent (Mask2Former's variant).

    A position (x, y) in ``0..1`` image coordinates (0 = left/top edge, 1 = right/bottom edge) maps to
    ``[enc(y), enc(x)]`` with ``enc(t)_{2i} = sin(scale * t / T^(2i/F))``,
    ``enc(t)_{2i+1} = cos(scale * t / T^(2i/F))`` over ``F = num_pos_feats`` channels. A feature map's
    cell (r, c) of an h x w map sits at its centre ``((c + 0.5) / w, (r + 0.5) / h)``, so grid
    encodings and encodings of arbitrary points (:meth:`encode_points`) agree.

    Args:
        num_pos_feats: channels per axis; the encoding has ``2 * num_pos_feats`` channels.
        temperature: T.
        scale: multiplier of the normalised coordinate (2π).

    """

    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000.0, scale: float = 2 * math.pi):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.scale = scale

    def _encode(self, t: Tensor) -> Tensor:
        """float[...] in 0..1 -> float[...,num_pos_feats]."""
        index = torch.arange(self.num_pos_feats, device=t.device, dtype=torch.float32)
        dim_t = self.temperature ** (2 * torch.div(index, 2, rounding_mode="floor") / self.num_pos_feats)
        angles = t.float().unsqueeze(-1) * self.scale / dim_t
        return torch.stack([angles[..., 0::2].sin(), angles[..., 1::2].cos()], dim=-1).flatten(-2)

    def encode_points(self, points: Tensor) -> Tensor:
        """Encode points.

        Args:
            points: float[...,2] as (x, y) in 0..1 image coordinates.

        Returns:
            float[...,2*num_pos_feats] (float32).

        """
        return torch.cat([self._encode(points[..., 1]), self._encode(points[..., 0])], dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        """Encode the grid of a feature map.

        Args:
            x: float[B,C,h,w] (only its shape, device and dtype are used).

        Returns:
            float[B,2*num_pos_feats,h,w] in ``x``'s dtype.

        """
        batch, _, h, w = x.shape
        ys = (torch.arange(h, device=x.device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=x.device, dtype=torch.float32) + 0.5) / w
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # [h,w,2] as (x, y)
        pos = self.encode_points(grid).permute(2, 0, 1)
        return pos.unsqueeze(0).expand(batch, -1, -1, -1).to(x.dtype)


@dataclass
class PixelDecoderOutput:
    """What the pixel decoder gives the FIND interface.

    mask_features: float[B,mask_dim,H/4,W/4], what mask embeddings are dotted with.
    levels: 3 x float[B,D,h,w] at strides 32, 16, 8 (:data:`LEVELS`), without level embeddings.
    positions: 3 x float[B,D,h,w], sine encodings of the levels' grids.
    level_embeddings: float[3,D], learned, one per level (same order).
    """

    mask_features: Tensor
    levels: list[Tensor]
    positions: list[Tensor]
    level_embeddings: Tensor

    @property
    def sizes(self) -> list[tuple[int, int]]:
        """(h, w) of each level."""
        return [(int(level.shape[-2]), int(level.shape[-1])) for level in self.levels]

    def memory(self, index: int) -> tuple[Tensor, Tensor]:
        """Level ``index`` flattened for cross-attention.

        Returns:
            ``(keys float[B,h*w,D]`` = features + level embedding, ``positions float[B,h*w,D])``,
            positions in row-major order (as :func:`~findlit.interface.heads.attention_mask_from_logits`).

        """
        keys = self.levels[index].flatten(2).transpose(1, 2) + self.level_embeddings[index]
        return keys, self.positions[index].flatten(2).transpose(1, 2)


def _group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, channels), channels)


def _conv(in_channels: int, out_channels: int, kernel_size: int, norm_groups: int | None) -> nn.Sequential:
    """Conv (+ GroupNorm), Mask2Former's ``c2_xavier_fill`` init; bias only without a norm."""
    conv = nn.Conv2d(
        in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=norm_groups is None
    )
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    if norm_groups is None:
        return nn.Sequential(conv)
    return nn.Sequential(conv, _group_norm(out_channels, norm_groups))


class PixelDecoder(nn.Module):
    """FPN pixel decoder: frozen ``res2..res5`` -> mask features (stride 4) + 3 levels (32, 16, 8).

    Args:
        in_channels: channels of each frozen level, ``{"res2": C2, ..., "res5": C5}``
            (``VisionEncoder.channels``).
        hidden_dim: width D of the levels (the interface width).
        mask_dim: channels of the mask features.
        num_encoder_layers: transformer-encoder layers on res5 (0 for a plain FPN).
        heads: attention heads of those layers.
        ffn_dim: FFN width of those layers.
        norm_groups: GroupNorm groups (reduced to a divisor of the width when it does not divide it).

    """

    def __init__(
        self,
        in_channels: Mapping[str, int],
        hidden_dim: int = 256,
        mask_dim: int = 256,
        num_encoder_layers: int = 1,
        heads: int = 8,
        ffn_dim: int = 1024,
        norm_groups: int = 32,
    ):
        super().__init__()
        missing = set(STRIDES) - set(in_channels)
        if missing:
            raise ValueError(f"in_channels lacks levels {sorted(missing)}; it needs {sorted(STRIDES)}")
        if hidden_dim % 2:
            raise ValueError(f"hidden_dim must be even (sine positions), got {hidden_dim}")
        self.hidden_dim = hidden_dim
        self.position = PositionEmbeddingSine(hidden_dim // 2)
        self.input_proj = _conv(in_channels["res5"], hidden_dim, 1, norm_groups)
        self.encoder_attention = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, heads) for _ in range(num_encoder_layers)
        )
        self.encoder_ffn = nn.ModuleList(FFNLayer(hidden_dim, ffn_dim) for _ in range(num_encoder_layers))
        # res5's output conv, then res4, res3, res2 (top-down order).
        self.lateral = nn.ModuleDict(
            {
                level: _conv(in_channels[level], hidden_dim, 1, norm_groups)
                for level in ("res4", "res3", "res2")
            }
        )
        self.output = nn.ModuleDict(
            {
                level: _conv(hidden_dim, hidden_dim, 3, norm_groups)
                for level in ("res5", "res4", "res3", "res2")
            }
        )
        self.mask_features = _conv(hidden_dim, mask_dim, 3, None)
        self.level_embed = nn.Embedding(len(LEVELS), hidden_dim)

    def forward(self, features: Mapping[str, Tensor]) -> PixelDecoderOutput:
        """Decode the pyramid.

        Args:
            features: ``{"res2": float[B,C2,H/4,W/4], ..., "res5": float[B,C5,H/32,W/32]}``, any
                float dtype (fp16 from a feature cache is cast to the decoder's weights' dtype).

        Returns:
            :class:`PixelDecoderOutput`.

        """
        dtype = self.level_embed.weight.dtype
        x = self.input_proj(features["res5"].to(dtype))
        if len(self.encoder_attention):
            batch, channels, h, w = x.shape
            pos = self.position(x).flatten(2).transpose(1, 2)
            tokens = x.flatten(2).transpose(1, 2)
            for attention, ffn in zip(self.encoder_attention, self.encoder_ffn, strict=True):
                tokens = ffn(attention(tokens, pos=pos))
            x = tokens.transpose(1, 2).reshape(batch, channels, h, w)
        outputs = {"res5": F.relu(self.output["res5"](x))}
        y = outputs["res5"]
        for level in ("res4", "res3", "res2"):
            lateral = self.lateral[level](features[level].to(dtype))
            y = lateral + F.interpolate(y, size=lateral.shape[-2:], mode="nearest")
            y = F.relu(self.output[level](y))
            outputs[level] = y
        levels = [outputs[level] for level in LEVELS]
        return PixelDecoderOutput(
            mask_features=self.mask_features(outputs["res2"]),
            levels=levels,
            positions=[self.position(level) for level in levels],
            level_embeddings=self.level_embed.weight,
        )
