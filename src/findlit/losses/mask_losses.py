"""Set-prediction losses of Mask2Former / FIND: CE with a no-object weight, BCE and Dice on sampled points.

Mask losses are read on importance-sampled points of the matched masks. Deep supervision sums the
weighted terms of every decoder layer (each layer is matched on its own).

Data-parallel training on N ranks equals one process with the N-fold batch (same samples, see
:class:`~findlit.data.sampler.MultiTaskBatchSampler`) when two things hold:

- Every loss is a sum over the rank's items divided by a normaliser averaged over ranks (the number
  of target masks for BCE and Dice, the sum of class weights for the segmentation CE, the number of
  matched sentences for the grounding CE): DDP averages the rank gradients, so the result is the
  gradient of the global sum over the global normaliser. A per-rank mean (Mask2Former's weighted CE)
  would weigh the ranks' items unequally whenever their counts differ. The average is clamped so
  that the *global* count is at least 1 (``1 / world_size`` per rank), which one process's clamp at
  1 matches.
- The random points of an image are the same wherever the image is: given per-image ``seeds`` (the
  batch's ``sample_seeds``), the matcher and the mask losses of layer l of an image draw from a
  generator seeded by (the image's seed, l) (:func:`~findlit.losses.points.image_generators`).

Both need the images' predictions to be the same in either setting, which holds when each image
has the same padded frame in both (see tests/distributed/test_multinode.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from findlit.losses.matcher import HungarianMatcher, Match
from findlit.losses.points import (
    DEFAULT_NUM_POINTS,
    Generators,
    PointSampling,
    check_generators,
    generator_of,
    image_generators,
    point_sample,
    uncertain_points,
)


@dataclass(frozen=True)
class LossWeights:
    """Weights of every loss term; the defaults are FIND's (``configs/find/focalt_unicl_lang.yaml``).

    Args:
        ce: segmentation classification (cross-entropy) weight.
        bce: segmentation mask BCE weight.
        dice: segmentation mask Dice weight.
        no_object: CE weight of the no-object class (relative to 1 for real classes).
        grounding_ce: grounding cross-entropy over proposals.
        grounding_bce: grounding mask BCE.
        grounding_dice: grounding mask Dice.
        retrieval: symmetric InfoNCE image-query vs caption-query.
        interleave_retrieval: symmetric InfoNCE legend-query vs image-query.
        spatial_ce: interactive (spatial) cross-entropy over proposals (FIND's ``SCLASS_WEIGHT``).
        spatial_bce: interactive mask BCE (``SMASK_WEIGHT``).
        spatial_dice: interactive mask Dice (``SDICE_WEIGHT``).

    """

    ce: float = 2.0
    bce: float = 5.0
    dice: float = 5.0
    no_object: float = 0.1
    grounding_ce: float = 0.4
    grounding_bce: float = 1.0
    grounding_dice: float = 1.0
    retrieval: float = 8.0
    interleave_retrieval: float = 8.0
    spatial_ce: float = 0.4
    spatial_bce: float = 1.0
    spatial_dice: float = 1.0

    def segmentation(self) -> dict[str, float]:
        """Per-term weights for ``deep_supervision`` of segmentation losses."""
        return {"ce": self.ce, "bce": self.bce, "dice": self.dice}

    def grounding(self) -> dict[str, float]:
        """Per-term weights for ``deep_supervision`` of grounding losses."""
        return {"ce": self.grounding_ce, "bce": self.grounding_bce, "dice": self.grounding_dice}

    def spatial(self) -> dict[str, float]:
        """Per-term weights of the interactive task's losses (the grounding losses' terms)."""
        return {"ce": self.spatial_ce, "bce": self.spatial_bce, "dice": self.spatial_dice}


def _training_world_size() -> int:
    """Ranks that average loss normalisers: the world size when distributed and gradients are on, else 1.

    Only when gradients are taken (training): under no_grad (evaluation, whose unpadded shards give
    ranks different numbers of batches) a collective per batch would pair unrelated calls across
    ranks or wait forever, and the local count is what one process uses.
    """
    if torch.is_grad_enabled() and dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def mean_across_ranks(values: Tensor) -> Tensor:
    """float[K] averaged over ranks (one all_reduce) when training distributed; else ``values``."""
    world = _training_world_size()
    if world == 1:
        return values
    total = values.clone()
    dist.all_reduce(total)
    return total / world


def count_normaliser(mean_count: Tensor) -> Tensor:
    """A per-rank mean count as a loss normaliser: clamped so that the count over all ranks is >= 1.

    The clamp is ``1 / world_size`` (not 1): with one target mask on one of two ranks the mean is
    0.5, and dividing by 0.5 on each rank gives the loss of one process over that one mask.
    """
    return mean_count.clamp(min=1.0 / _training_world_size())


def num_masks_across_ranks(num_local: int, device: torch.device) -> Tensor:
    """The mask-loss normaliser: target masks of this rank averaged over ranks (see the module doc).

    When not training distributed, the local count, at least 1.
    """
    return count_normaliser(mean_across_ranks(torch.tensor(float(num_local), device=device)))


def _counts_across_ranks(counts: Sequence[float], device: torch.device) -> list[Tensor]:
    """Several per-rank counts averaged over ranks in one all_reduce: scalars in the order given."""
    return list(mean_across_ranks(torch.tensor([float(c) for c in counts], device=device)).unbind())


def _query_indices(matches: Sequence[Match]) -> tuple[Tensor, Tensor]:
    """(batch_idx, query_idx) of every match, images in order."""
    batch_idx = torch.cat([torch.full_like(query, b) for b, (query, _) in enumerate(matches)])
    query_idx = torch.cat([query for query, _ in matches])
    return batch_idx, query_idx


def _zero(like: Tensor) -> Tensor:
    # keeps the graph: every parameter still gets a (zero) gradient, which DDP needs
    return like.sum() * 0.0


def classification_loss(
    class_logits: Tensor,
    matches: Sequence[Match],
    target_labels: Sequence[Tensor],
    num_classes: int,
    no_object_weight: float = 0.1,
    normaliser: Tensor | float | None = None,
) -> Tensor:
    """Cross-entropy over K classes + no object; unmatched queries are no object.

    Args:
        class_logits: float[B, Q, K+1].
        matches: per image (query_idx, target_idx) from the matcher.
        target_labels: per image int64[N_i] in [0, K).
        num_classes: K.
        no_object_weight: class weight of the no-object class (the others weigh 1).
        normaliser: what the weighted sum is divided by; default: this batch's sum of the queries'
            class weights (the weighted mean). Under DDP pass that sum averaged over ranks
            (:func:`classification_weight_sum`, :func:`mean_across_ranks`).

    Returns:
        scalar: the weighted sum of the B*Q queries' cross-entropies over ``normaliser``.

    """
    if class_logits.shape[-1] != num_classes + 1:
        raise ValueError(f"class_logits has {class_logits.shape[-1]} classes; expected {num_classes} + 1")
    target = torch.full(class_logits.shape[:2], num_classes, dtype=torch.int64, device=class_logits.device)
    batch_idx, query_idx = _query_indices(matches)
    labels = [target_labels[b].to(class_logits.device)[tgt] for b, (_, tgt) in enumerate(matches)]
    target[batch_idx, query_idx] = torch.cat(labels)
    weight = torch.ones(num_classes + 1, device=class_logits.device)
    weight[-1] = no_object_weight
    # reduction="none" gives weight[target] * CE per query
    weighted = F.cross_entropy(class_logits.float().transpose(1, 2), target, weight, reduction="none")
    if normaliser is None:
        normaliser = weight[target].sum()
    return weighted.sum() / normaliser


def classification_weight_sum(
    num_queries: int, target_counts: Sequence[int], no_object_weight: float = 0.1
) -> float:
    """The sum of the class weights of a batch's B*Q queries: ``classification_loss``'s default normaliser.

    Known before matching: the Hungarian matching gives ``min(Q, N_i)`` queries of image i a real
    class (weight 1); the rest are no object (weight ``no_object_weight``).

    Args:
        num_queries: Q.
        target_counts: per image N_i, its number of targets.
        no_object_weight: the no-object class weight.

    """
    matched = sum(min(num_queries, int(n)) for n in target_counts)
    total = num_queries * len(target_counts)
    return matched + no_object_weight * (total - matched)


def grounding_classification_loss(
    similarity: Tensor,
    matches: Sequence[Match],
    sentence_valid: Tensor,
    normaliser: Tensor | float | None = None,
) -> Tensor:
    """FIND's grounding CE: each sentence classifies the proposals, its matched proposal is the target.

    Args:
        similarity: float[B, Q, S_max] proposal-sentence logits.
        matches: per image (query_idx, sentence_idx) from ``match_by_similarity``.
        sentence_valid: bool[B, S_max].
        normaliser: what the sum over matched sentences is divided by; default: their number (the
            mean). Under DDP pass that number averaged over ranks.

    Returns:
        scalar: the sum over the matched sentences of the batch over ``normaliser`` (0 with a graph
        if none).

    """
    rows, targets = [], []
    for b, (query, sentence) in enumerate(matches):
        per_sentence = similarity[b][:, sentence_valid[b].to(similarity.device)].T  # [S_i, Q]
        rows.append(per_sentence[sentence])
        targets.append(query)
    logits = torch.cat(rows)
    if logits.shape[0] == 0:
        return _zero(similarity)
    losses = F.cross_entropy(logits.float(), torch.cat(targets), reduction="none")
    return losses.sum() / (losses.shape[0] if normaliser is None else normaliser)


def dice_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-mask soft Dice loss float[M] of logits float[M, P] against targets float[M, P] (+1 smoothing)."""
    prob = logits.sigmoid()
    numerator = 2 * (prob * targets).sum(-1)
    denominator = prob.sum(-1) + targets.sum(-1)
    return 1 - (numerator + 1) / (denominator + 1)


def mask_losses(
    mask_logits: Tensor,
    matches: Sequence[Match],
    target_masks: Sequence[Tensor],
    num_points: int = DEFAULT_NUM_POINTS,
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
    num_masks: Tensor | float | None = None,
    generator: Generators = None,
) -> tuple[Tensor, Tensor]:
    """Sigmoid BCE and Dice of the matched masks on importance-sampled points.

    Args:
        mask_logits: float[B, Q, H, W].
        matches: per image (query_idx, target_idx).
        target_masks: per image bool[N_i, H_t, W_t] in the padded frame of the predictions.
        num_points: points per matched mask.
        oversample_ratio: see ``uncertain_points``.
        importance_sample_ratio: see ``uncertain_points``.
        num_masks: the normaliser; default: ``num_masks_across_ranks`` of the target masks (an all_reduce
            when distributed, so pass it when calling per layer).
        generator: generator(s) on ``mask_logits.device`` for the points: one for the batch (drawn
            from image by image) or one per image.

    Returns:
        (bce, dice): sums over matched masks of the per-mask mean BCE and the Dice, divided by num_masks.

    """
    check_generators(generator, len(matches))
    if num_masks is None:
        num_masks = num_masks_across_ranks(sum(int(m.shape[0]) for m in target_masks), mask_logits.device)
    batch_idx, query_idx = _query_indices(matches)
    if batch_idx.numel() == 0:
        zero = _zero(mask_logits)
        return zero, zero.clone()
    pred = mask_logits[batch_idx.to(mask_logits.device), query_idx.to(mask_logits.device)][:, None].float()
    # image by image (the rows of pred are grouped by image): each image's points from its own draws
    points, labels, start = [], [], 0
    with torch.no_grad():
        for b, (_, tgt) in enumerate(matches):
            count = int(tgt.numel())
            if count:
                coords = uncertain_points(
                    pred[start : start + count].detach(),
                    num_points,
                    oversample_ratio,
                    importance_sample_ratio,
                    generator_of(generator, b),
                )
                masks = target_masks[b][tgt.to(target_masks[b].device)].to(mask_logits.device, torch.float32)
                labels.append(point_sample(masks[:, None], coords)[:, 0])
                points.append(coords)
            start += count
    coords = torch.cat(points)
    point_labels = torch.cat(labels)
    point_logits = point_sample(pred, coords)[:, 0]  # [M, P]
    bce = F.binary_cross_entropy_with_logits(point_logits, point_labels, reduction="none").mean(1)
    return bce.sum() / num_masks, dice_loss(point_logits, point_labels).sum() / num_masks


def deep_supervision(
    layer_terms: Sequence[Mapping[str, Tensor]], weights: Mapping[str, float]
) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted sum of the loss terms of every decoder layer.

    Args:
        layer_terms: per layer (first to last) ``{term name: scalar}``.
        weights: ``{term name: weight}``; every term must have one.

    Returns:
        (total, logs): the weighted sum over layers and terms, and the detached unweighted terms
        keyed ``"{name}_{layer}"`` (the last layer also as ``name``).

    """
    if not layer_terms:
        raise ValueError("deep_supervision needs at least one layer")
    total: Tensor | None = None
    logs: dict[str, Tensor] = {}
    for layer, terms in enumerate(layer_terms):
        for name, value in terms.items():
            if name not in weights:
                raise KeyError(f"no weight for loss term {name!r}; weights have {sorted(weights)}")
            weighted = weights[name] * value
            total = weighted if total is None else total + weighted
            logs[f"{name}_{layer}"] = value.detach()
    logs.update({name: value.detach() for name, value in layer_terms[-1].items()})
    assert total is not None
    return total, logs


def segmentation_losses(
    class_logits: Sequence[Tensor],
    mask_logits: Sequence[Tensor],
    targets: Sequence[Mapping[str, Tensor]],
    matcher: HungarianMatcher,
    num_classes: int,
    weights: LossWeights = LossWeights(),
    sampling: PointSampling = PointSampling(),  # noqa: B008 (a frozen dataclass)
    generator: torch.Generator | None = None,
    seeds: Sequence[int] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """CE + BCE + Dice on every decoder layer, each layer matched on its own (Mask2Former).

    Args:
        class_logits: per layer float[B, Q, K+1].
        mask_logits: per layer float[B, Q, H, W].
        targets: per image ``{"labels": int64[N_i], "masks": bool[N_i, H_t, W_t]}``.
        matcher: the Hungarian matcher.
        num_classes: K.
        weights: loss weights (``ce``, ``bce``, ``dice``, ``no_object`` are used).
        sampling: points of the mask losses.
        generator: one generator for the points of the whole batch (all layers).
        seeds: per image a seed (the batch's ``sample_seeds``): each image's points in layer l come
            from a generator seeded by (seed, l); exclusive with ``generator``. Neither: the global
            generator.

    Returns:
        (total, logs) as ``deep_supervision``.

    """
    device = mask_logits[-1].device
    counts = [int(t["masks"].shape[0]) for t in targets]
    # one collective for both normalisers; the CE's is known before matching
    ce_weights = classification_weight_sum(int(mask_logits[-1].shape[1]), counts, weights.no_object)
    mean_masks, mean_ce_weights = _counts_across_ranks([sum(counts), ce_weights], device)
    num_masks = count_normaliser(mean_masks)
    # positive whenever a query weighs anything; when none does, the weighted sum is 0 as well
    ce_normaliser = mean_ce_weights.clamp(min=torch.finfo(torch.float32).tiny)
    labels = [t["labels"] for t in targets]
    masks = [t["masks"] for t in targets]

    def layer(index: int, cls: Tensor, msk: Tensor) -> dict[str, Tensor]:
        generators = _layer_generators(generator, seeds, index, len(targets), msk.device)
        matches = matcher(cls, msk, targets, generator=generators)
        bce, dice = _mask_terms(msk, matches, masks, sampling, num_masks, generators)
        return {
            "ce": classification_loss(cls, matches, labels, num_classes, weights.no_object, ce_normaliser),
            "bce": bce,
            "dice": dice,
        }

    return deep_supervision(_per_layer(layer, class_logits, mask_logits), weights.segmentation())


def grounding_losses(
    similarity: Sequence[Tensor],
    mask_logits: Sequence[Tensor],
    sentence_valid: Tensor,
    targets: Sequence[Mapping[str, Tensor]],
    matcher: HungarianMatcher,
    weights: LossWeights = LossWeights(),
    sampling: PointSampling = PointSampling(),  # noqa: B008 (a frozen dataclass)
    generator: torch.Generator | None = None,
    seeds: Sequence[int] | None = None,
    term_weights: Mapping[str, float] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Grounding CE (over proposals) + BCE + Dice on every layer, matched by ``match_by_similarity``.

    Args:
        similarity: per layer float[B, Q, S_max] proposal-sentence logits.
        mask_logits: per layer float[B, Q, H, W].
        sentence_valid: bool[B, S_max].
        targets: per image ``{"masks": bool[S_i, H_t, W_t]}``.
        matcher: supplies the matching cost weights and points.
        weights: loss weights (the ``grounding_*`` ones are used).
        sampling: points of the mask losses.
        generator: one generator for the points of the whole batch (all layers).
        seeds: per image a seed; see ``segmentation_losses``.
        term_weights: ``{"ce", "bce", "dice"}`` weights; None = ``weights.grounding()`` (the
            interactive task passes ``weights.spatial()``: FIND's spatial losses are these terms).

    Returns:
        (total, logs) as ``deep_supervision``.

    """
    device = mask_logits[-1].device
    counts = [int(t["masks"].shape[0]) for t in targets]
    # every sentence gets a proposal when Q >= S_i, else Q of them do (as in match_by_similarity)
    num_queries = int(mask_logits[-1].shape[1])
    matched = sum(min(num_queries, n) for n in counts)
    mean_masks, mean_matched = _counts_across_ranks([sum(counts), matched], device)
    num_masks, num_sentences = count_normaliser(mean_masks), count_normaliser(mean_matched)
    masks = [t["masks"] for t in targets]

    def layer(index: int, sim: Tensor, msk: Tensor) -> dict[str, Tensor]:
        generators = _layer_generators(generator, seeds, index, len(targets), msk.device)
        matches = matcher.match_by_similarity(sim, sentence_valid, msk, targets, generator=generators)
        bce, dice = _mask_terms(msk, matches, masks, sampling, num_masks, generators)
        ce = grounding_classification_loss(sim, matches, sentence_valid, num_sentences)
        return {"ce": ce, "bce": bce, "dice": dice}

    terms = weights.grounding() if term_weights is None else dict(term_weights)
    return deep_supervision(_per_layer(layer, similarity, mask_logits), terms)


def _layer_generators(
    generator: torch.Generator | None,
    seeds: Sequence[int] | None,
    layer: int,
    batch_size: int,
    device: torch.device,
) -> Generators:
    """The points' generators of one decoder layer: per image from ``seeds``, else ``generator``."""
    if seeds is None:
        return generator
    if generator is not None:
        raise ValueError("give the losses per-image seeds or one generator, not both")
    if len(seeds) != batch_size:
        raise ValueError(f"{len(seeds)} seeds for a batch of {batch_size} images")
    return image_generators(seeds, layer, device)


def _mask_terms(
    mask_logits: Tensor,
    matches: Sequence[Match],
    masks: Sequence[Tensor],
    sampling: PointSampling,
    num_masks: Tensor,
    generator: Generators,
) -> tuple[Tensor, Tensor]:
    return mask_losses(
        mask_logits,
        matches,
        masks,
        sampling.num_points,
        sampling.oversample_ratio,
        sampling.importance_sample_ratio,
        num_masks,
        generator,
    )


def _per_layer(
    fn: Callable[[int, Tensor, Tensor], dict[str, Tensor]], first: Sequence[Tensor], second: Sequence[Tensor]
) -> list[dict[str, Tensor]]:
    """``fn(layer index, first[layer], second[layer])`` for every layer."""
    if len(first) != len(second) or not first:
        raise ValueError(f"per-layer predictions disagree: {len(first)} vs {len(second)} layers")
    return [fn(index, a, b) for index, (a, b) in enumerate(zip(first, second, strict=True))]
