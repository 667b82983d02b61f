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


def _all_gather(tensor: Tensor) -> list[Tensor]:
    """Every rank's ``tensor`` (same shape on every rank), in rank order; no gradient."""
    chunks = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(chunks, tensor.contiguous())
    return chunks


class _GatherSumGrad(torch.autograd.Function):
    """all_gather forward; backward: sum the gathered gradient over ranks, return the local slice."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        rank, n = dist.get_rank(), tensor.shape[0]
        ctx.local = (rank * n, (rank + 1) * n)
        chunks = _all_gather(tensor)
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


def symmetric_infonce(
    image: Tensor,
    text: Tensor,
    logit_scale: Tensor,
    gather: bool = True,
    valid: Tensor | None = None,
) -> Tensor:
    """CLIP's symmetric contrastive loss; every image's own texts are its positives.

    With ``text`` float[N, D] it is CLIP's loss: row i of ``image`` and of ``text`` are the positive
    pair. With ``text`` float[N, k, D] (k captions per image, as COCO has five) the image-to-text
    term is a cross-entropy against the uniform distribution over the image's valid texts (the
    mean of its k CLIP terms, each against every text of the batch), and every valid text is a row
    of the text-to-image term, labelled with its image. k = 1 is exactly CLIP's loss.

    Features are L2-normalised (in float32); each local row is scored against the columns of all
    ranks, and the label of local image i is ``rank * N + i``.

    Args:
        image: float[N, D] image-side embeddings of this rank.
        text: float[N, D] or float[N, k, D] text-side (or legend-side) embeddings of each image.
        logit_scale: scalar multiplier of the cosine similarities (already exponentiated, as in CLIP).
        gather: take the negatives of every rank when distributed (every rank must pass the same
            N and k).
        valid: bool[N, k] (``text`` float[N, k, D] only): which texts exist; every image needs one.
            None: all.

    Returns:
        scalar: mean of the image->text and text->image cross-entropies over the local rows.

    """
    per_image = text.unsqueeze(1) if text.dim() == 2 else text
    if (
        image.dim() != 2
        or per_image.dim() != 3
        or per_image.shape[0] != image.shape[0]
        or per_image.shape[2] != image.shape[1]
    ):
        raise ValueError(
            f"image must be [N, D] and text [N, D] or [N, k, D]; "
            f"got {tuple(image.shape)}, {tuple(text.shape)}"
        )
    count, per = int(per_image.shape[0]), int(per_image.shape[1])
    if valid is None:
        valid = torch.ones(count, per, dtype=torch.bool, device=image.device)
    else:  # (checked only when given: the test reads the values, a device sync per step)
        if valid.shape != per_image.shape[:2]:
            raise ValueError(f"valid must be [N, k] = {tuple(per_image.shape[:2])}; got {tuple(valid.shape)}")
        if not bool(valid.any(dim=1).all()):
            raise ValueError("every image needs at least one valid text")
    image = F.normalize(image.float(), dim=-1)
    flat_text = F.normalize(per_image.float(), dim=-1).reshape(count * per, -1)
    flat_valid = valid.reshape(count * per)
    offset = 0
    all_image, all_text, all_valid = image, flat_text, flat_valid
    # Only when gradients are taken: evaluation runs under no_grad on unpadded shards, where ranks
    # run different numbers of batches and a collective per batch would pair unrelated calls
    # (or wait forever); an evaluation loss is this rank's batch against itself, as in one process.
    if gather and _distributed() and torch.is_grad_enabled():
        all_image, all_text = gather_with_grad(image), gather_with_grad(flat_text)
        all_valid = torch.cat(_all_gather(flat_valid))
        offset = dist.get_rank() * count
    scale = logit_scale.float()
    owners = torch.arange(count, device=image.device).repeat_interleave(per) + offset
    # image -> text: the target spreads evenly over the image's own valid texts; missing texts
    # get the most negative logit (not -inf, whose product with a zero target would be nan)
    # (in float32: under autocast the product may be bfloat16, which cannot hold that logit)
    image_to_text = (
        (scale * image @ all_text.T).float().masked_fill(~all_valid, torch.finfo(torch.float32).min)
    )
    columns = (torch.arange(count, device=image.device) + offset).unsqueeze(1) * per
    target = torch.zeros_like(image_to_text)
    target.scatter_(1, columns + torch.arange(per, device=image.device), valid.float())
    target = target / target.sum(dim=1, keepdim=True)
    # text -> image: one row per valid text, labelled with its image
    text_to_image = scale * flat_text[flat_valid] @ all_image.T
    return (F.cross_entropy(image_to_text, target) + F.cross_entropy(text_to_image, owners[flat_valid])) / 2
