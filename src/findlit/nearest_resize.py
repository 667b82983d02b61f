"""The one nearest-neighbour resize of masks and id maps, with one pixel convention.

Output pixel ``i`` of ``n_out`` takes input pixel ``floor((i + 0.5) * n_in / n_out)``: output pixel
centres are mapped to input pixel centres, which is what ``F.interpolate(mode="nearest-exact")``
and the antialiased bilinear image resize do, so a resized mask stays on the resized image. (The
corner rule ``floor(i * n_in / n_out)``, ``mode="nearest"``, shifts masks by up to half an input
pixel towards the top left.)

The index is computed in integers, so it is exact and the same on every platform; torch computes it
in float32 and, where ``(i + 0.5) * n_in / n_out`` is exactly an integer (a tie between two
pixels), may take the pixel before. Resizing gathers pixels rather than interpolating, so any dtype
keeps its exact values: bool masks, int64 segment ids.

Training masks (:mod:`findlit.data.transforms`), the masks ``findlit test`` writes, the overlays
and the masks ``findlit predict`` returns all go through :func:`resize_nearest`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def nearest_indices(in_size: int, out_size: int, device: torch.device | str | None = None) -> Tensor:
    """int64[out_size]: the input index each output pixel takes, ``floor((i + 0.5) * in / out)``."""
    if in_size < 1 or out_size < 0:
        raise ValueError(f"cannot resize {in_size} pixels to {out_size}")
    out = torch.arange(out_size, device=device)
    # (2i + 1) * in < 2 * out * in, so the index is always below in_size
    return (2 * out + 1) * in_size // (2 * out_size)


def resize_nearest(
    values: Tensor, size: Sequence[int], crop: tuple[int, int, int, int] | None = None
) -> Tensor:
    """Nearest-neighbour resize of the last two dims of ``values`` [..., h, w] to ``size`` = (H, W).

    Args:
        values: any dtype, any leading dims (including an empty one, e.g. bool[0,h,w]).
        size: (H, W).
        crop: (top, left, height, width) of the resized [H, W] to keep, or None for all of it;
            only the kept pixels are computed.

    Returns:
        [..., H, W] (or [..., height, width] with ``crop``), same dtype and device, a new tensor;
        ``values`` itself when there is nothing to do (same size, no crop).

    """
    height, width = int(size[0]), int(size[1])
    h, w = int(values.shape[-2]), int(values.shape[-1])
    top, left, crop_h, crop_w = crop if crop is not None else (0, 0, height, width)
    if (h, w) == (height, width) and (top, left, crop_h, crop_w) == (0, 0, height, width):
        return values
    rows = nearest_indices(h, height, values.device)[top : top + crop_h]
    cols = nearest_indices(w, width, values.device)[left : left + crop_w]
    return _take(values, rows, cols)


def _take(values: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``values[..., rows[:, None], cols[None, :]]`` without a loop over leading dims."""

    def take_cols(x: Tensor) -> Tensor:
        # gather with an expanded (stride-0) index is several times faster than index_select on
        # the last dim, which dominates the cost for many large masks
        return torch.gather(x, -1, cols.expand(*x.shape[:-1], cols.numel()))

    # rows first when that shrinks the tensor, last when it grows it: the column gather then
    # touches as few elements as possible
    if rows.numel() <= values.shape[-2]:
        return take_cols(values.index_select(-2, rows))
    return take_cols(values).index_select(-2, rows)
