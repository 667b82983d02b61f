"""Metrics torchmetrics lacks, per-task builders, and the per-image inputs of the segmentation metrics.

Gallery retrieval recall, grounding cIoU/mIoU/P@t, interactive NoC and IoU after k clicks; panoptic maps
and instance targets for PQ and mask AP.

May import encoders, data and the top-level helpers (errors); not interface, losses or outputs (same
layer), nor anything above. It imports none of them today.
"""

from findlit.metrics.collections import (
    SegmentationMetrics,
    clone_for_stage,
    grounding_metrics,
    interleave_metrics,
    retrieval_metrics,
    segmentation_metrics,
)
from findlit.metrics.grounding import GroundingMetrics
from findlit.metrics.interactive import InteractiveMetrics, clicks_to_reach
from findlit.metrics.panoptic import (
    VOID_CATEGORY,
    instance_target,
    panoptic_prediction_map,
    panoptic_target_map,
)
from findlit.metrics.retrieval import RetrievalRecall
from findlit.metrics.semantic_iou import SemanticIoU

__all__ = [
    "VOID_CATEGORY",
    "GroundingMetrics",
    "InteractiveMetrics",
    "RetrievalRecall",
    "SegmentationMetrics",
    "SemanticIoU",
    "clicks_to_reach",
    "clone_for_stage",
    "grounding_metrics",
    "instance_target",
    "interleave_metrics",
    "panoptic_prediction_map",
    "panoptic_target_map",
    "retrieval_metrics",
    "segmentation_metrics",
]
