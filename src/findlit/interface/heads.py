"""Output heads of the FIND interface: mask embeddings, semantic projection, open-vocabulary logits.

The heads take the decoder outputs as they are; the shared ``LayerNorm`` that Mask2Former and
X-Decoder apply before all heads (``decoder_norm``) belongs to the interface, not to a head.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn


class MaskHead(nn.Module):
    """Decoder outputs -> mask embeddings (3-layer MLP) -> mask logits against the mask features.

    Args:
        dim: width D of the decoder outputs.
        mask_dim: channels of the pixel decoder's mask features.

    """

    def __init__(self, dim: int, mask_dim: int):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, mask_dim)])

    def embed(self, x: Tensor) -> Tensor:
        """float[B,Q,D] -> mask embeddings float[B,Q,mask_dim]."""
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x

    def forward(self, x: Tensor, mask_features: Tensor) -> tuple[Tensor, Tensor]:
        """Mask embeddings and mask logits.

        Args:
            x: float[B,Q,D], decoder outputs.
            mask_features: float[B,mask_dim,H/4,W/4].

        Returns:
            ``(embeddings float[B,Q,mask_dim], mask_logits float[B,Q,H/4,W/4])``.

        """
        embeddings = self.embed(x)
        logits = torch.einsum("bqc,bchw->bqhw", embeddings, mask_features.to(embeddings.dtype))
        return embeddings, logits


def attention_mask_from_logits(
    mask_logits: Tensor, target_size: tuple[int, int], threshold: float = 0.5
) -> Tensor:
    """Where each proposal may attend at the next layer's resolution (Mask2Former's masked attention).

    The logits are resized bilinearly (``align_corners=False``) to ``target_size``; a position is
    allowed where ``sigmoid >= threshold``. The result carries no gradient. A proposal whose mask is
    empty gets an all-False row here; the attention layers open such rows (see
    :mod:`findlit.interface.layers`).

    Args:
        mask_logits: float[B,Q,H',W'].
        target_size: (h, w) of the level the next cross-attention reads.
        threshold: probability from which a position is inside the mask.

    Returns:
        bool[B,Q,h*w], True = may attend, positions in row-major (``flatten``) order.

    """
    resized = F.interpolate(
        mask_logits.detach().float(), size=tuple(target_size), mode="bilinear", align_corners=False
    )
    return (resized.sigmoid() >= threshold).flatten(2)


class SemanticProjection(nn.Module):
    """Decoder outputs -> the joint embedding space where classes, captions and prompts are compared.

    A bias-free linear map, as X-Decoder's ``class_embed`` (a bias would shift every cosine the same
    way and only fight the normalisation).

    Args:
        dim: width D of the decoder outputs.
        embed_dim: width E of the joint space.

    """

    def __init__(self, dim: int, embed_dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, embed_dim, bias=False)
        nn.init.trunc_normal_(self.linear.weight, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        """float[...,D] -> float[...,E]."""
        return self.linear(x)


class MaskPooledEmbedding(nn.Module):
    """A proposal's mask features pooled under its own predicted mask, projected to the joint space.

    Not in FIND: the mask pooling of open-vocabulary segmenters (FC-CLIP, ODISE), added to the
    proposals' semantic embeddings when :class:`~findlit.interface.find.FINDInterface` is built with
    ``mask_pooling=True``. It gives classification a direct path to the pixels under each mask: on
    the embedded default the ten shape classes are told apart much sooner this way (best-IoU
    proposal accuracy on things 0.44 -> 0.66 after 400 segmentation steps).

    The mask weights are ``sigmoid(mask_logits)``, detached, so the classification losses do not
    reshape the masks, and zero on padded cells; the pooled vector is a weighted mean (with one unit
    of prior weight, so an empty mask pools to about zero rather than dividing by zero) through a
    2-layer MLP.

    Args:
        mask_dim: channels of the mask features.
        embed_dim: width E of the joint space.

    """

    def __init__(self, mask_dim: int, embed_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(mask_dim, mask_dim), nn.ReLU(), nn.Linear(mask_dim, embed_dim))

    def forward(self, mask_logits: Tensor, mask_features: Tensor, padding: Tensor | None = None) -> Tensor:
        """Pooled embeddings.

        Args:
            mask_logits: float[B,Q,h,w] at the mask features' resolution.
            mask_features: float[B,C,h,w].
            padding: bool[B,h,w], True on padded cells (never pooled); None = no padding.

        Returns:
            float[B,Q,E].

        """
        weights = mask_logits.detach().sigmoid()
        if padding is not None:
            weights = weights.masked_fill(padding.unsqueeze(1), 0.0)
        return self.pool(weights, mask_features)

    def pool(self, weights: Tensor, mask_features: Tensor) -> Tensor:
        """float[B,Q,h,w] weights in [0, 1] and float[B,C,h,w] features -> float[B,Q,E]."""
        weights = weights.to(mask_features.dtype)
        pooled = torch.einsum("bqhw,bchw->bqc", weights, mask_features)
        pooled = pooled / (weights.flatten(2).sum(-1, keepdim=True) + 1.0)
        return self.mlp(pooled)


class LogitScale(nn.Module):
    """Learnable temperature of the cosine logits, stored as a log and clamped (CLIP).

    Args:
        init: initial log scale (CLIP's ``log(1/0.07)``).
        max: largest log scale (``log(100)``); above it the clamp stops the gradient, as in CLIP.

    """

    def __init__(self, init: float = math.log(1 / 0.07), max: float = math.log(100)):
        super().__init__()
        self.max = max
        self.log_scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self) -> Tensor:
        """The scale ``exp(min(log_scale, max))``, a float scalar tensor."""
        return self.log_scale.clamp(max=self.max).exp()


class NoObjectEmbedding(nn.Module):
    """A learned "no object" class embedding float[E] for :func:`class_logits`.

    X-Decoder appends the text embedding of "background" to the class names; here that embedding
    is learned instead, so it does not depend on the text encoder's idea of "background". Being an
    embedding rather than a constant logit, its logit differs per proposal.

    Args:
        embed_dim: width E of the joint space.

    """

    def __init__(self, embed_dim: int):
        super().__init__()
        self.embedding = nn.Parameter(torch.randn(embed_dim) * 0.02)

    def forward(self) -> Tensor:
        """float[E]."""
        return self.embedding


def class_logits(
    proposal_embeddings: Tensor,
    class_embeddings: Tensor,
    logit_scale: Tensor | float,
    no_object: Tensor | None = None,
) -> Tensor:
    """Scaled cosine similarity between proposals and any number of class embeddings.

    Args:
        proposal_embeddings: float[B,Q,E].
        class_embeddings: float[K,E] (shared by the batch) or float[B,K,E]; any K, so the
            vocabulary is open.
        logit_scale: scalar multiplier (:class:`LogitScale`'s output).
        no_object: optional float[E] (:class:`NoObjectEmbedding`); when given, its scaled cosine is
            appended as column K, the "no object" class of the classification loss.

    Returns:
        float[B,Q,K], or float[B,Q,K+1] with ``no_object``.

    """
    if class_embeddings.dim() == 2:
        class_embeddings = class_embeddings.unsqueeze(0).expand(proposal_embeddings.shape[0], -1, -1)
    if no_object is not None:
        background = no_object.to(class_embeddings.dtype).expand(class_embeddings.shape[0], 1, -1)
        class_embeddings = torch.cat([class_embeddings, background], dim=1)
    proposals = F.normalize(proposal_embeddings, dim=-1)
    classes = F.normalize(class_embeddings, dim=-1).to(proposals.dtype)
    return logit_scale * torch.einsum("bqe,bke->bqk", proposals, classes)
