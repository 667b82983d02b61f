"""Hungarian matching of mask proposals to targets (Mask2Former), and FIND's grounding matching.

Costs are computed on the same uniform random points for the predictions and the targets of an
image (Mask2Former samples uniformly in matching and by importance only in the losses), batched
as [queries x targets] matrices; only the images are looped over. Each image's points come from
its own generator when one is given per image (:data:`~findlit.losses.points.Generators`). The
assignment itself is scipy's ``linear_sum_assignment`` on CPU.

Grounding (referring segmentation), as in FIND / X-Decoder's ``grounding`` matching mode: every
sentence has one target mask, and the proposals' semantic embeddings are compared with the
sentence embedding. The "class" of a proposal for a sentence is the softmax *over proposals*
of that similarity, so the class cost asks "which proposal does this sentence point at"; with the
mask and dice costs, a one-to-one Hungarian assignment over [proposals x sentences] picks the
proposal of each sentence. The grounding CE then trains the similarity to prefer that proposal
(see ``grounding_classification_loss``). ``match_by_similarity`` implements exactly that.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F  # noqa: N812
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from findlit.losses.points import (
    DEFAULT_NUM_POINTS,
    Generators,
    check_generators,
    generator_of,
    point_sample,
)

Match = tuple[Tensor, Tensor]
"""(query_idx int64[M], target_idx int64[M]) of one image."""


def pairwise_mask_costs(pred_points: Tensor, target_points: Tensor) -> tuple[Tensor, Tensor]:
    """Sigmoid BCE and Dice costs between every prediction and every target, on shared points.

    Args:
        pred_points: float[Q, P] mask logits.
        target_points: float[N, P] target values in [0, 1].

    Returns:
        (bce float[Q, N], dice float[Q, N]); BCE is the mean over points.

    """
    num_points = pred_points.shape[1]
    # BCE(x, 1) = softplus(-x), BCE(x, 0) = softplus(x): sum over points as two matmuls
    bce = (
        F.softplus(-pred_points) @ target_points.T + F.softplus(pred_points) @ (1 - target_points).T
    ) / max(num_points, 1)
    prob = pred_points.sigmoid()
    numerator = 2 * prob @ target_points.T
    denominator = prob.sum(-1)[:, None] + target_points.sum(-1)[None, :]
    dice = 1 - (numerator + 1) / (denominator + 1)
    return bce, dice


def _empty_match(device: torch.device) -> Match:
    empty = torch.empty(0, dtype=torch.int64, device=device)
    return empty, empty.clone()


def _assign(cost: Tensor) -> Match:
    """Minimum-cost one-to-one assignment of rows (queries) to columns (targets)."""
    if not torch.isfinite(cost).all():
        raise ValueError("the matching cost has NaN or infinite entries (diverged predictions?)")
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    device = cost.device
    return (
        torch.as_tensor(rows, dtype=torch.int64, device=device),
        torch.as_tensor(cols, dtype=torch.int64, device=device),
    )


def _image_cost(
    class_cost: Tensor | None,
    pred_masks: Tensor,
    target_masks: Tensor,
    weights: tuple[float, float, float],
    num_points: int,
    generator: torch.Generator | None,
) -> Tensor:
    """Cost float32[Q, N] of one image; class_cost [Q, N] is already negated, masks [Q,H,W] and [N,Ht,Wt]."""
    w_class, w_mask, w_dice = weights
    coords = torch.rand(1, num_points, 2, generator=generator, device=pred_masks.device)
    pred_points = point_sample(pred_masks[None].float(), coords)[0]  # queries as channels: [Q, P]
    target_points = point_sample(target_masks[None].to(pred_masks.device, torch.float32), coords)[0]
    bce, dice = pairwise_mask_costs(pred_points, target_points)
    cost = w_mask * bce + w_dice * dice
    if class_cost is not None:
        cost = cost + w_class * class_cost
    return cost


class HungarianMatcher:
    """Mask2Former's matcher: one-to-one assignment minimising class, mask (BCE) and dice costs.

    Args:
        cost_class: weight of the class cost (minus the softmax probability of the target class).
        cost_mask: weight of the sigmoid BCE cost on the sampled points.
        cost_dice: weight of the dice cost on the sampled points.
        num_points: uniform random points per image on which mask costs are computed.

    """

    def __init__(
        self,
        cost_class: float = 2.0,
        cost_mask: float = 5.0,
        cost_dice: float = 5.0,
        num_points: int = DEFAULT_NUM_POINTS,
    ) -> None:
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("all matching costs are 0")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points

    @property
    def _weights(self) -> tuple[float, float, float]:
        return self.cost_class, self.cost_mask, self.cost_dice

    @torch.no_grad()
    def __call__(
        self,
        class_logits: Tensor | None,
        mask_logits: Tensor,
        targets: Sequence[Mapping[str, Tensor]],
        generator: Generators = None,
    ) -> list[Match]:
        """Match the queries of every image to its targets.

        Args:
            class_logits: float[B, Q, K+1] (last class: no object), or None for mask costs only.
            mask_logits: float[B, Q, H, W] (any stride of the padded batch frame).
            targets: per image ``{"labels": int64[N_i], "masks": bool[N_i, H_t, W_t]}`` in the padded
                frame; ``labels`` is unused when ``class_logits`` is None.
            generator: generator(s) on ``mask_logits.device`` for reproducible points: one for the
                batch or one per image (each image then draws one [1, P, 2] set from its own).

        Returns:
            per image (query_idx int64[M_i], target_idx int64[M_i]), M_i = min(Q, N_i), sorted by query.

        """
        if len(targets) != mask_logits.shape[0]:
            raise ValueError(f"{len(targets)} targets for a batch of {mask_logits.shape[0]}")
        check_generators(generator, len(targets))
        matches: list[Match] = []
        # costs in float32 whatever the autocast: the assignment is sensitive to ties
        with torch.autocast(mask_logits.device.type, enabled=False):
            for b, target in enumerate(targets):
                masks = target["masks"]
                if masks.shape[0] == 0:
                    matches.append(_empty_match(mask_logits.device))
                    continue
                class_cost = None
                if class_logits is not None and self.cost_class != 0:
                    prob = class_logits[b].float().softmax(-1)
                    class_cost = -prob[:, target["labels"].to(prob.device)]
                points = generator_of(generator, b)
                cost = _image_cost(class_cost, mask_logits[b], masks, self._weights, self.num_points, points)
                matches.append(_assign(cost))
        return matches

    def match_by_similarity(
        self,
        similarity: Tensor,
        sentence_valid: Tensor,
        mask_logits: Tensor,
        targets: Sequence[Mapping[str, Tensor]],
        generator: Generators = None,
    ) -> list[Match]:
        """``match_by_similarity`` with this matcher's cost weights and number of points."""
        return match_by_similarity(
            similarity,
            sentence_valid,
            mask_logits,
            targets,
            cost_class=self.cost_class,
            cost_mask=self.cost_mask,
            cost_dice=self.cost_dice,
            num_points=self.num_points,
            generator=generator,
        )


@torch.no_grad()
def match_by_similarity(
    similarity: Tensor,
    sentence_valid: Tensor,
    mask_logits: Tensor,
    targets: Sequence[Mapping[str, Tensor]],
    *,
    cost_class: float = 2.0,
    cost_mask: float = 5.0,
    cost_dice: float = 5.0,
    num_points: int = DEFAULT_NUM_POINTS,
    generator: Generators = None,
) -> list[Match]:
    """FIND's grounding matching: pick one proposal per sentence (Hungarian over proposals x sentences).

    The class cost is minus the softmax over proposals of the proposal-sentence similarity; mask
    and dice costs compare each proposal with each sentence's target mask on shared uniform points.
    Used for grounding and for interleave grounding (entities in place of sentences).

    Args:
        similarity: float[B, Q, S_max] proposal-sentence logits (scaled cosine similarities).
        sentence_valid: bool[B, S_max], True for the real (non-padding) sentences.
        mask_logits: float[B, Q, H, W].
        targets: per image ``{"masks": bool[S_i, H_t, W_t]}``, one mask per valid sentence in order.
        cost_class: weight of the similarity cost.
        cost_mask: weight of the BCE cost.
        cost_dice: weight of the dice cost.
        num_points: uniform random points per image.
        generator: generator(s) on ``mask_logits.device``: one for the batch or one per image.

    Returns:
        per image (query_idx int64[M_i], sentence_idx int64[M_i]) sorted by sentence: ``query_idx[j]``
        is the proposal of valid sentence ``sentence_idx[j]`` (indices among the valid sentences).
        M_i = S_i when Q >= S_i; otherwise only Q sentences get a proposal.

    """
    if similarity.shape[:2] != mask_logits.shape[:2] or sentence_valid.shape != (
        similarity.shape[0],
        similarity.shape[2],
    ):
        raise ValueError(
            f"shapes disagree: similarity {tuple(similarity.shape)}, sentence_valid "
            f"{tuple(sentence_valid.shape)}, mask_logits {tuple(mask_logits.shape)}"
        )
    if len(targets) != mask_logits.shape[0]:
        raise ValueError(f"{len(targets)} targets for a batch of {mask_logits.shape[0]}")
    check_generators(generator, len(targets))
    matches: list[Match] = []
    with torch.autocast(mask_logits.device.type, enabled=False):
        for b, target in enumerate(targets):
            masks = target["masks"]
            valid = sentence_valid[b].to(similarity.device)
            if masks.shape[0] != int(valid.sum()):
                raise ValueError(f"image {b}: {masks.shape[0]} target masks for {int(valid.sum())} sentences")
            if masks.shape[0] == 0:
                matches.append(_empty_match(mask_logits.device))
                continue
            class_cost = -similarity[b][:, valid].float().softmax(dim=0)  # [Q, S_i]: softmax over proposals
            weights = (cost_class, cost_mask, cost_dice)
            cost = _image_cost(
                class_cost, mask_logits[b], masks, weights, num_points, generator_of(generator, b)
            )
            query_idx, sentence_idx = _assign(cost)
            order = sentence_idx.argsort()
            matches.append((query_idx[order], sentence_idx[order]))
    return matches
