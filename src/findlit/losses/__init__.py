"""Matching and losses of FIND's tasks: Hungarian matcher with point sampling, mask/dice/CE, InfoNCE.

May import encoders, data (seeds of the point sampling) and the top-level helpers (errors); not
interface, metrics or outputs (same layer), nor anything above.
"""

from findlit.losses.contrastive import gather_with_grad, symmetric_infonce
from findlit.losses.mask_losses import (
    LossWeights,
    classification_loss,
    classification_weight_sum,
    count_normaliser,
    deep_supervision,
    dice_loss,
    grounding_classification_loss,
    grounding_losses,
    mask_losses,
    mean_across_ranks,
    num_masks_across_ranks,
    segmentation_losses,
)
from findlit.losses.matcher import HungarianMatcher, Match, match_by_similarity, pairwise_mask_costs
from findlit.losses.points import (
    DEFAULT_NUM_POINTS,
    Generators,
    PointSampling,
    image_generators,
    point_sample,
    uncertain_points,
)

__all__ = [
    "DEFAULT_NUM_POINTS",
    "Generators",
    "HungarianMatcher",
    "LossWeights",
    "Match",
    "PointSampling",
    "classification_loss",
    "classification_weight_sum",
    "count_normaliser",
    "deep_supervision",
    "dice_loss",
    "gather_with_grad",
    "grounding_classification_loss",
    "grounding_losses",
    "image_generators",
    "mask_losses",
    "match_by_similarity",
    "mean_across_ranks",
    "num_masks_across_ranks",
    "pairwise_mask_costs",
    "point_sample",
    "segmentation_losses",
    "symmetric_infonce",
    "uncertain_points",
]
