"""Prompts into interface inputs: text embeddings by projection; visual prompts as masks and points.

Every visual prompt (a mask, a box, clicks, a scribble) is a boolean mask over the (padded) image;
:func:`boxes_to_masks` and :func:`points_to_masks` turn boxes and point sets (clicks, or the points
of a scribble) into masks. The interface's visual-prompt encoder
(:mod:`~findlit.interface.visual_prompts`) reads the pixel decoder's features at points drawn from
those masks by :func:`sample_mask_points`; :func:`sample_prompt_points` draws positives inside and
negatives outside one mask, and :func:`sample_features` reads feature maps at points.

Sampling is vectorised over prompts by random top-k: every pixel gets a uniform random key, keys of
pixels not allowed are set to -inf, and the k largest keys per prompt are the points, i.e. k distinct
pixels drawn uniformly without replacement. A prompt with fewer than k allowed pixels yields fewer
valid points: the rest are marked invalid, never NaN. Given a ``torch.Generator`` the sampling is
deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from findlit.encoders.base import TextEmbeddings


class LanguageProjection(nn.Module):
    """Frozen text embeddings -> interface width: a trainable linear map + LayerNorm.

    Tokens and sentence vectors share the map (they are in the same space for mean-pooled text
    encoders, and one map keeps them comparable). Padding tokens stay zero.

    Args:
        text_dim: width of the text encoder.
        dim: interface width D.

    """

    def __init__(self, text_dim: int, dim: int):
        super().__init__()
        self.linear = nn.Linear(text_dim, dim)
        self.norm = nn.LayerNorm(dim)

    def project(self, x: Tensor) -> Tensor:
        """float[...,text_dim] -> float[...,D]."""
        return self.norm(self.linear(x.to(self.linear.weight.dtype)))

    def forward(self, embeddings: TextEmbeddings) -> TextEmbeddings:
        """Project tokens float[T,L,text_dim] and sentence float[T,text_dim] to width D; mask kept."""
        tokens = self.project(embeddings.tokens) * embeddings.mask.unsqueeze(-1)
        return TextEmbeddings(tokens=tokens, mask=embeddings.mask, sentence=self.project(embeddings.sentence))


def boxes_to_masks(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Boxes -> masks of the pixels whose centre lies in the box.

    Args:
        boxes: float[N,4] as (x0, y0, x1, y1) in pixels.
        size: (H, W) of the masks.

    Returns:
        bool[N,H,W].

    """
    h, w = size
    ys = torch.arange(h, device=boxes.device, dtype=torch.float32) + 0.5
    xs = torch.arange(w, device=boxes.device, dtype=torch.float32) + 0.5
    x0, y0, x1, y1 = (boxes.float()[:, i, None] for i in range(4))
    inside_x = (xs >= x0) & (xs <= x1)  # [N,W]
    inside_y = (ys >= y0) & (ys <= y1)  # [N,H]
    return inside_y[:, :, None] & inside_x[:, None, :]


def points_to_masks(
    points: Tensor, size: tuple[int, int], radius: float = 3.0, valid: Tensor | None = None
) -> Tensor:
    """Point sets (clicks, or the points of a scribble) -> masks of disks around the points.

    Args:
        points: float[N,K,2] as (x, y) in pixels.
        size: (H, W) of the masks.
        radius: disk radius in pixels (pixel centres within it are in the mask).
        valid: bool[N,K], which points are real (padding of varying K); None = all.

    Returns:
        bool[N,H,W]. Memory is N*K*H*W booleans; pass masks directly for long scribbles at full size.

    """
    h, w = size
    ys = torch.arange(h, device=points.device, dtype=torch.float32) + 0.5
    xs = torch.arange(w, device=points.device, dtype=torch.float32) + 0.5
    px, py = points.float()[..., 0], points.float()[..., 1]
    dy = (ys[None, None, :] - py[..., None]) ** 2  # [N,K,H]
    dx = (xs[None, None, :] - px[..., None]) ** 2  # [N,K,W]
    near = dy[..., :, None] + dx[..., None, :] <= radius**2  # [N,K,H,W]
    if valid is not None:
        near = near & valid[..., None, None]
    return near.any(dim=1)


@dataclass
class PromptPoints:
    """Points sampled for N visual prompts, P = positives then negatives per prompt.

    points: float[N,P,2] as (x, y) in 0..1 image coordinates.
    positive: bool[N,P], True for points drawn inside the mask.
    valid: bool[N,P], False where the mask had too few pixels on that side.
    """

    points: Tensor
    positive: Tensor
    valid: Tensor


def _rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Uniform noise drawn on the generator's device (so a CPU generator works for any data)."""
    source = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=source).to(device)


def _random_top_k(
    allowed: Tensor, k: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Draw k distinct allowed cells per row of bool[N,h,w] uniformly.

    Returns:
        ``(rows long[N,k], cols long[N,k], valid bool[N,k])``.

    """
    n, h, w = allowed.shape
    keys = _rand((n, h * w), generator, allowed.device).masked_fill(~allowed.flatten(1), float("-inf"))
    top, index = keys.topk(min(k, h * w), dim=1)
    valid = torch.isfinite(top)
    if k > h * w:  # fewer cells than points: pad with invalid picks
        pad = k - h * w
        index = F.pad(index, (0, pad))
        valid = F.pad(valid, (0, pad), value=False)
    return index // w, index % w, valid


def sample_prompt_points(
    masks: Tensor, num_points: int, num_negative: int, generator: torch.Generator | None = None
) -> PromptPoints:
    """Draw positive points inside and negative points outside each prompt mask.

    Args:
        masks: bool[N,H,W], one mask per prompt over the (padded) image.
        num_points: positives per prompt (distinct pixels of the mask).
        num_negative: negatives per prompt (distinct pixels outside it).
        generator: for reproducible draws (on the masks' device, or the CPU).

    Returns:
        :class:`PromptPoints` with P = ``num_points + num_negative``.

    """
    masks = masks.bool()
    n, h, w = masks.shape
    sides = [(masks, num_points, True), (~masks, num_negative, False)]
    points, positive, valid = [], [], []
    for allowed, k, is_positive in sides:
        rows, cols, ok = _random_top_k(allowed, k, generator)
        jitter = _rand((n, k, 2), generator, masks.device)
        xy = torch.stack([(cols + jitter[..., 0]) / w, (rows + jitter[..., 1]) / h], dim=-1)
        points.append(xy)
        positive.append(torch.full((n, k), is_positive, dtype=torch.bool, device=masks.device))
        valid.append(ok)
    return PromptPoints(torch.cat(points, dim=1), torch.cat(positive, dim=1), torch.cat(valid, dim=1))


def sample_features(features: Sequence[Tensor], points: Tensor, batch_index: Tensor) -> Tensor:
    """Bilinear features at points, averaged over feature maps.

    Each image's maps are sampled at every prompt's points (B * N * P samples, cheap) and each prompt
    keeps its own image's row, which avoids copying a feature map per prompt.

    Args:
        features: M x float[B,C,h_m,w_m], maps covering the whole image (any strides).
        points: float[N,P,2] as (x, y) in 0..1 image coordinates.
        batch_index: long[N], the image of each prompt.

    Returns:
        float[N,P,C].

    """
    n, p, _ = points.shape
    sampled = []
    for feature in features:
        grid = (points * 2 - 1).to(feature.dtype).reshape(1, n * p, 1, 2).expand(feature.shape[0], -1, -1, -1)
        values = F.grid_sample(feature, grid, mode="bilinear", padding_mode="border", align_corners=False)
        values = values.squeeze(-1).transpose(1, 2).reshape(feature.shape[0], n, p, -1)  # [B,N,P,C]
        sampled.append(values[batch_index, torch.arange(n, device=points.device)])
    return torch.stack(sampled).mean(dim=0)


def sample_mask_points(
    masks: Tensor, counts: Tensor, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Draw ``counts[n]`` distinct pixels of mask n, uniformly without replacement, at pixel centres.

    Args:
        masks: bool[N,H,W].
        counts: long[N], points wanted per mask (0 = none).
        generator: for reproducible draws (on the masks' device, or the CPU).

    Returns:
        ``(points float[N,K,2], valid bool[N,K])`` with K = the largest ``min(counts[n], pixels of mask
        n)`` (0 without masks): points as
        (x, y) in 0..1 image coordinates, pixel (r, c) at ``((c + 0.5) / W, (r + 0.5) / H)``; point j of
        mask n is valid when ``j < counts[n]`` and the mask has more than j pixels.

    """
    n, h, w = masks.shape
    masks = masks.bool()
    # no slot for points a mask cannot give: K is the largest count of points actually drawn
    counts = torch.minimum(counts.to(masks.device), masks.flatten(1).sum(dim=1))
    k = int(counts.max()) if n else 0
    rows, cols, valid = _random_top_k(masks, k, generator)
    valid = valid & (torch.arange(k, device=masks.device)[None, :] < counts[:, None])
    points = torch.stack([(cols.float() + 0.5) / w, (rows.float() + 0.5) / h], dim=-1)
    return points, valid
