"""A parameter-free "simple feature pyramid" for single-stride encoders (plain ViTs).

ViTDet builds res2..res5 from the stride-16 map of a plain ViT with *learned* deconvolutions and
convolutions. Here the encoder is frozen, and anything learned belongs to the interface (its pixel
decoder), not to the encoder: a learned pyramid inside the encoder would either never train or
silently make the "frozen" features depend on training. So the pyramid is fixed resampling only:

- a finer level (smaller stride) is bilinear upsampling (``align_corners=False``), e.g. stride 16 ->
  res3 by 2x and res2 by 4x;
- a coarser level is average pooling over non-overlapping ``k x k`` windows, e.g. stride 16 -> res5
  by 2x2 pooling. Averaging (rather than ViTDet's max pooling) keeps res5 a low-pass version of the
  same signed features, with no upward bias and no aliasing of single tokens;
- the level at the encoder's own stride is the map itself.

The pyramid has no parameters and no state; :data:`PYRAMID_ID` names the resampling scheme and goes
into encoder specs, so cached features made with another scheme are never mixed with these.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from findlit.encoders.base import STRIDES

PYRAMID_ID = "simple-bilinear-up-avg-down-v1"
"""Identifies the resampling scheme in encoder specs (change it when the scheme changes)."""

SOURCE_STRIDES = (1, 2, 4, 8, 16, 32)
"""Strides a source map may have: powers of two up to 32, so every level is an integer resampling."""


def resample(feature: Tensor, from_stride: int, to_stride: int) -> Tensor:
    """Resample a feature map from one stride to another without parameters.

    Args:
        feature: float[B,C,h,w] at stride ``from_stride``.
        from_stride: the stride of ``feature`` (one of :data:`SOURCE_STRIDES`).
        to_stride: the stride wanted (one of :data:`SOURCE_STRIDES`).

    Returns:
        float[B,C,h*from_stride/to_stride,w*from_stride/to_stride]: bilinear upsampling when
        ``to_stride < from_stride``, ``k x k`` average pooling (``k = to_stride / from_stride``) when
        it is larger, ``feature`` itself when equal.

    """
    for stride in (from_stride, to_stride):
        if stride not in SOURCE_STRIDES:
            raise ValueError(f"strides must be one of {SOURCE_STRIDES}, got {stride}")
    if to_stride == from_stride:
        return feature
    if to_stride < from_stride:
        factor = from_stride // to_stride
        size = (feature.shape[-2] * factor, feature.shape[-1] * factor)
        return F.interpolate(feature, size=size, mode="bilinear", align_corners=False)
    window = to_stride // from_stride
    if feature.shape[-2] % window or feature.shape[-1] % window:
        raise ValueError(
            f"a stride-{from_stride} map of size {tuple(feature.shape[-2:])} cannot be pooled to stride "
            f"{to_stride}: its sides must be multiples of {window}"
        )
    return F.avg_pool2d(feature, kernel_size=window, stride=window)


def simple_feature_pyramid(feature: Tensor, stride: int) -> dict[str, Tensor]:
    """res2..res5 from one map: every level is ``feature`` resampled to the level's stride.

    Args:
        feature: float[B,C,H/stride,W/stride].
        stride: its stride (one of :data:`SOURCE_STRIDES`; 16 for a patch-16 ViT).

    Returns:
        ``{"res2": float[B,C,H/4,W/4], "res3": [B,C,H/8,W/8], "res4": [B,C,H/16,W/16],
        "res5": [B,C,H/32,W/32]}``.

    """
    return {level: resample(feature, stride, level_stride) for level, level_stride in STRIDES.items()}


def layerwise_feature_pyramid(features: Sequence[Tensor], stride: int) -> dict[str, Tensor]:
    """res2..res5 from four maps of the same stride (e.g. four ViT blocks), one map per level.

    Args:
        features: four float[B,C,H/stride,W/stride] maps, for res2, res3, res4, res5 in that order
            (shallow blocks usually feed the fine levels).
        stride: their stride (one of :data:`SOURCE_STRIDES`).

    Returns:
        The ``res2..res5`` dict, ``features[i]`` resampled to the stride of the i-th level.

    """
    if len(features) != len(STRIDES):
        raise ValueError(f"a layer-wise pyramid needs {len(STRIDES)} maps, got {len(features)}")
    return {
        level: resample(feature, stride, level_stride)
        for feature, (level, level_stride) in zip(features, STRIDES.items(), strict=True)
    }
