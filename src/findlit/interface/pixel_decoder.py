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

With a padding mask (images of a batch zero-padded to a common frame), the decoder computes each
image's valid cells as if the image were alone in a frame of its own size: the masks are
downsampled once per level (a cell is padding when it is entirely padding), GroupNorm takes its
statistics over valid cells only, padded cells are zeroed before every 3x3 convolution (as the
convolution's own zero padding at a frame border), the res5 encoder layers do not attend to padded
cells, and the sine positions are normalised to each image's own extent (DETR with a mask).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

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

    With a padding mask, the extent is each image's own (DETR's cumulative sum of the unpadded
    cells): valid cell (r, c) of an image whose valid cells span rows ``top..top+h_i-1`` and columns
    ``left..left+w_i-1`` sits at ``((c - left + 0.5) / w_i, (r - top + 0.5) / h_i)``, the
    :meth:`encode_points` of its centre in that image's own 0..1 coordinates. An image's positions
    then do not depend on the frame it is padded into.

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

    def forward(self, x: Tensor, padding: Tensor | None = None) -> Tensor:
        """Encode the grid of a feature map.

        Args:
            x: float[B,C,h,w] (only its shape, device and dtype are used).
            padding: bool[B,h,w], True on padded cells: positions are then normalised to each
                image's valid cells (padded cells get finite values of no meaning); None = the
                whole map is the image.

        Returns:
            float[B,2*num_pos_feats,h,w] in ``x``'s dtype.

        """
        if padding is not None:
            pos = self.encode_points(_cell_centres(~padding)).permute(0, 3, 1, 2)
            return pos.to(x.dtype)
        batch, _, h, w = x.shape
        ys = (torch.arange(h, device=x.device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=x.device, dtype=torch.float32) + 0.5) / w
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # [h,w,2] as (x, y)
        pos = self.encode_points(grid).permute(2, 0, 1)
        return pos.unsqueeze(0).expand(batch, -1, -1, -1).to(x.dtype)


def _cell_centres(valid: Tensor) -> Tensor:
    """Each cell's centre in its image's own 0..1 coordinates, from the valid cells.

    Args:
        valid: bool[B,h,w], True on the image's cells (a rectangle per image).

    Returns:
        float[B,h,w,2] as (x, y): valid cell (r, c) -> ``((c - left + 0.5) / w_i, (r - top + 0.5) / h_i)``
        (DETR's cumulative sums; the divisor is clamped to 1 so padded rows and columns stay finite).

    """
    ones = valid.float()
    ys, xs = ones.cumsum(1), ones.cumsum(2)
    ys = (ys - 0.5) / ys[:, -1:].clamp(min=1.0)
    xs = (xs - 0.5) / xs[:, :, -1:].clamp(min=1.0)
    return torch.stack([xs, ys], dim=-1)


@dataclass
class PixelDecoderOutput:
    """What the pixel decoder gives the FIND interface.

    mask_features: float[B,mask_dim,H/4,W/4], what mask embeddings are dotted with.
    levels: 3 x float[B,D,h,w] at strides 32, 16, 8 (:data:`LEVELS`), without level embeddings.
    positions: 3 x float[B,D,h,w], sine encodings of the levels' grids.
    level_embeddings: float[3,D], learned, one per level (same order).
    padding: 3 x bool[B,h,w] (same order), True on cells that are entirely padding; None = no
        padding. Features and positions on padded cells are finite but meaningless.
    mask_padding: bool[B,H/4,W/4], the same on the mask features' grid; None = no padding.
    """

    mask_features: Tensor
    levels: list[Tensor]
    positions: list[Tensor]
    level_embeddings: Tensor
    padding: list[Tensor] | None = None
    mask_padding: Tensor | None = None

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

    def select(self, index: Tensor) -> PixelDecoderOutput:
        """The output of the images ``index`` (long[R], repeats allowed), e.g. one row per prompted object."""
        return PixelDecoderOutput(
            self.mask_features[index],
            [level[index] for level in self.levels],
            [position[index] for position in self.positions],
            self.level_embeddings,
            None if self.padding is None else [padding[index] for padding in self.padding],
            None if self.mask_padding is None else self.mask_padding[index],
        )

    def valid_keys(self) -> list[Tensor] | None:
        """Per level bool[B,h*w], True on keys of an image's own cells (in :meth:`memory`'s order).

        None without padding.
        """
        if self.padding is None:
            return None
        return [~padding.flatten(1) for padding in self.padding]


def downsample_padding(padding: Tensor, factor: int, size: tuple[int, int]) -> Tensor:
    """A padding mask on a grid ``factor`` times coarser: a cell is padding when entirely padding.

    Cell (r, c) of the coarse grid covers fine cells ``r*factor..(r+1)*factor-1`` (and columns
    alike), as a stride-``factor`` convolution's output does. Fine cells beyond ``padding``'s extent
    (a coarse grid rounded up) count as padding; fine cells beyond the coarse grid's cover (rounded
    down) are dropped.

    Args:
        padding: bool[B,H,W], True on padding.
        factor: how many fine cells a coarse cell spans per axis.
        size: (h, w) of the coarse grid.

    Returns:
        bool[B,h,w].

    """
    h, w = size
    height, width = h * factor, w * factor
    if tuple(padding.shape[-2:]) != (height, width):
        fitted = padding.new_ones(padding.shape[0], height, width)
        rows, cols = min(height, int(padding.shape[-2])), min(width, int(padding.shape[-1]))
        fitted[:, :rows, :cols] = padding[:, :rows, :cols]
        padding = fitted
    return padding.unflatten(2, (w, factor)).unflatten(1, (h, factor)).all(-1).all(2)


def level_paddings(padding_mask: Tensor, sizes: Mapping[str, tuple[int, int]]) -> dict[str, Tensor]:
    """The input's padding mask on every pyramid level's grid (each from the next finer one, so once).

    Args:
        padding_mask: bool[B,H,W] at input resolution, True on padding.
        sizes: (h, w) of each level ``res2..res5`` (strides :data:`~findlit.encoders.base.STRIDES`).

    Returns:
        ``{level: bool[B,h,w]}``, True on cells that are entirely padding.

    """
    paddings: dict[str, Tensor] = {}
    finer, finer_stride = padding_mask, 1
    for level, stride in sorted(STRIDES.items(), key=lambda item: item[1]):
        paddings[level] = downsample_padding(finer, stride // finer_stride, sizes[level])
        finer, finer_stride = paddings[level], stride
    return paddings


def masked_group_norm(norm: nn.GroupNorm, x: Tensor, valid: Tensor) -> Tensor:
    """``norm(x)`` with each image's statistics taken over its valid cells only.

    Padded cells are zeroed first, so plain sums over the map are sums over the image; the mean
    and variance come from the sum and the squared norm of each group (one pass each, in float32)
    and the norm is one ``addcmul`` (a per-image, per-channel scale and shift). Forward and
    backward take about 3x a native GroupNorm, a third less than a masked two-pass form.

    Args:
        norm: the GroupNorm whose groups, eps and affine parameters are used.
        x: float[B,C,h,w].
        valid: float[B,1,h,w], 1 on an image's cells, 0 on padding (left out of the statistics).

    Returns:
        float[B,C,h,w] in ``x``'s dtype; padded cells are normalised with their image's statistics.

    """
    batch, channels = x.shape[:2]
    per_group = channels // norm.num_groups
    dtype = x.dtype
    x = x * valid.to(dtype)  # a multiply, cheaper than masked_fill's copy and fill, forward and back
    groups = x.float().reshape(batch, norm.num_groups, -1)  # [B,G,C/G*h*w]
    count = (valid.flatten(1).sum(-1, keepdim=True) * per_group).clamp(min=1.0)  # [B,1]
    mean = groups.sum(-1) / count  # [B,G]
    # E[x²] - E[x]² in float32: accurate while a group's mean is within some 100x its spread
    squares = torch.linalg.vector_norm(groups, dim=-1).square()
    variance = (squares / count - mean.square()).clamp(min=0.0)
    scale = torch.rsqrt(variance + norm.eps).repeat_interleave(per_group, dim=1)  # [B,C]
    shift = -mean.repeat_interleave(per_group, dim=1) * scale
    if norm.affine:
        scale = scale * norm.weight
        shift = shift * norm.weight + norm.bias
    return torch.addcmul(shift[:, :, None, None], x, scale[:, :, None, None]).to(dtype)


def _group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, channels), channels)


class ConvNorm(nn.Sequential):
    """A convolution (module ``0``) and an optional GroupNorm (``1``) that can honour padding.

    With a padding mask, padded input cells are zeroed before a spatial (k > 1) convolution, as its
    own zero padding at a frame border would be, and the norm's statistics leave them out.
    """

    def forward(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        """float[B,C_in,h,w] -> float[B,C_out,h,w].

        ``valid``: float[B,1,h,w], 1 on an image's cells and 0 on padding; None = no padding.
        """
        if valid is None:
            return super().forward(x)
        conv = cast(nn.Conv2d, self[0])
        if conv.kernel_size != (1, 1):
            x = x * valid.to(x.dtype)
        x = conv(x)
        if len(self) > 1:
            x = masked_group_norm(cast(nn.GroupNorm, self[1]), x, valid)
        return x


def _conv(in_channels: int, out_channels: int, kernel_size: int, norm_groups: int | None) -> ConvNorm:
    """Conv (+ GroupNorm), Mask2Former's ``c2_xavier_fill`` init; bias only without a norm."""
    conv = nn.Conv2d(
        in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=norm_groups is None
    )
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    if norm_groups is None:
        return ConvNorm(conv)
    return ConvNorm(conv, _group_norm(out_channels, norm_groups))


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

    def forward(
        self, features: Mapping[str, Tensor], padding_mask: Tensor | None = None
    ) -> PixelDecoderOutput:
        """Decode the pyramid.

        Args:
            features: ``{"res2": float[B,C2,H/4,W/4], ..., "res5": float[B,C5,H/32,W/32]}``, any
                float dtype (fp16 from a feature cache is cast to the decoder's weights' dtype).
            padding_mask: bool[B,H,W] at input resolution, True on padding; None = no padding.

        Returns:
            :class:`PixelDecoderOutput`.

        """
        dtype = self.level_embed.weight.dtype
        paddings: dict[str, Tensor | None] = dict.fromkeys(STRIDES)
        if padding_mask is not None:
            sizes = {level: (int(f.shape[-2]), int(f.shape[-1])) for level, f in features.items()}
            paddings.update(level_paddings(padding_mask, sizes))
        # float[B,1,h,w] per level, 1 on image cells: what the convolutions and norms multiply by
        valid = {
            level: None if padding is None else padding.logical_not().unsqueeze(1).to(dtype)
            for level, padding in paddings.items()
        }
        x = self.input_proj(features["res5"].to(dtype), valid["res5"])
        if len(self.encoder_attention):
            x = self._encode(x, paddings["res5"])
        outputs = {"res5": F.relu(self.output["res5"](x, valid["res5"]))}
        y = outputs["res5"]
        for level in ("res4", "res3", "res2"):
            lateral = self.lateral[level](features[level].to(dtype), valid[level])
            y = lateral + F.interpolate(y, size=lateral.shape[-2:], mode="nearest")
            y = F.relu(self.output[level](y, valid[level]))
            outputs[level] = y
        levels = [outputs[level] for level in LEVELS]
        level_padding = [paddings[level] for level in LEVELS]
        return PixelDecoderOutput(
            mask_features=self.mask_features(outputs["res2"], valid["res2"]),
            levels=levels,
            positions=[self.position(out, pad) for out, pad in zip(levels, level_padding, strict=True)],
            level_embeddings=self.level_embed.weight,
            padding=None if padding_mask is None else [cast(Tensor, p) for p in level_padding],
            mask_padding=paddings["res2"],
        )

    def _encode(self, x: Tensor, padding: Tensor | None) -> Tensor:
        """The transformer-encoder layers over res5 float[B,D,h,w]; padded cells are never keys."""
        batch, channels, h, w = x.shape
        pos = self.position(x, padding).flatten(2).transpose(1, 2)
        tokens = x.flatten(2).transpose(1, 2)
        attend = None
        if padding is not None:
            attend = (~padding).flatten(1).unsqueeze(1).expand(batch, h * w, h * w)
        for attention, ffn in zip(self.encoder_attention, self.encoder_ffn, strict=True):
            tokens = ffn(attention(tokens, attend, pos))
        return tokens.transpose(1, 2).reshape(batch, channels, h, w)
