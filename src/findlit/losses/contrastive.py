"""Symmetric InfoNCE (CLIP) whose negatives are gathered from every rank, with correct DDP gradients.

Why the gather's backward sums the gradients over ranks. Rank r's loss L_r (its N rows against
all W*N columns) depends on the features f_s of every rank s, as negatives. The loss of the global
batch is L = (1/W) sum_r L_r, whose parameter gradient is (1/W) sum_s [sum_r dL_r/df_s] df_s/dtheta.
Rank s can only backpropagate into its own f_s, and DDP averages the parameter gradients over
ranks (the 1/W). So rank s must receive sum_r dL_r/df_s: the gradient of every rank's loss with
respect to its slice. ``all_gather`` of the detached features with the local chunk put back
(which keeps only dL_s/df_s) drops the cross-rank terms, and its DDP average is NOT the gradient
of the global batch (tests/losses/test_contrastive.py shows the difference). Here the forward is
a plain ``all_gather`` whose local chunk is the local tensor's values, and the backward
all-reduces (sums) the gradient of the gathered tensor and hands each rank its own slice; with
DDP's averaging the result equals the gradient of one process on the concatenated batch.
(``torch.distributed.nn.all_gather`` aims at the same; this one needs only all_gather and
all_reduce, which every backend, gloo included, provides.)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F  # noqa: N812
from torch import Tensor


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _GatherSumGrad(torch.autograd.Function):
    """all_gather forward; backward: sum the gathered gradient over ranks, return the local slice."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        rank, n = dist.get_rank(), tensor.shape[0]
        ctx.local = (rank * n, (rank + 1) * n)
        chunks = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(chunks, tensor.contiguous())
        chunks[rank] = tensor  # the same values; the exact local tensor
        return torch.cat(chunks)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start, end = ctx.local
        return grad[start:end]


def gather_with_grad(tensor: Tensor) -> Tensor:
    """All ranks' tensors concatenated in rank order; gradients reach each rank's own slice (see module doc).

    Every rank must pass the same shape. A no-op outside an initialised process group of size > 1.

    Args:
        tensor: float[N, D].

    Returns:
        float[world * N, D]; rows ``rank * N : (rank + 1) * N`` are ``tensor``.

    """
    if not _distributed():
        return tensor
    out: Tensor = _GatherSumGrad.apply(tensor)
    return out


def symmetric_infonce(image: Tensor, text: Tensor, logit_scale: Tensor, gather: bool = True) -> Tensor:
    """CLIP's symmetric contrastive loss; row i of ``image`` and of ``text`` are the positive pair.

    Features are L2-normalised (in float32); each local row is scored against the columns of all
    ranks, and the label of local row i is ``rank * N + i``.

    Args:
        image: float[N, D] image-side embeddings of this rank.
        text: float[N, D] text-side (or legend-side) embeddings, paired by row.
        logit_scale: scalar multiplier of the cosine similarities (already exponentiated, as in CLIP).
        gather: take the negatives of every rank when distributed.

    Returns:
        scalar: mean of the image->text and text->image cross-entropies over the local rows.

    """
    if image.shape != text.shape or image.dim() != 2:
        raise ValueError(f"image and text must both be [N, D]; got {tuple(image.shape)}, {tuple(text.shape)}")
    image = F.normalize(image.float(), dim=-1)
    text = F.normalize(text.float(), dim=-1)
    offset = 0
    all_image, all_text = image, text
    # Only when gradients are taken: evaluation runs under no_grad on unpadded shards, where ranks
    # run different numbers of batches and a collective per batch would pair unrelated calls
    # (or wait forever); an evaluation loss is this rank's batch against itself, as in one process.
    if gather and _distributed() and torch.is_grad_enabled():
        all_image, all_text = gather_with_grad(image), gather_with_grad(text)
        offset = dist.get_rank() * image.shape[0]
    labels = torch.arange(image.shape[0], device=image.device) + offset
    scale = logit_scale.float()
    image_to_text = scale * image @ all_text.T
    text_to_image = scale * text @ all_image.T
    return (F.cross_entropy(image_to_text, labels) + F.cross_entropy(text_to_image, labels)) / 2
