"""Metrics torchmetrics lacks (gallery retrieval recall, grounding cIoU/mIoU/P@t) and per-task builders."""

from findlit.metrics.collections import (
    SegmentationMetrics,
    clone_for_stage,
    grounding_metrics,
    interleave_metrics,
    retrieval_metrics,
    segmentation_metrics,
)
from findlit.metrics.grounding import GroundingMetrics
from findlit.metrics.retrieval import RetrievalRecall

__all__ = [
    "GroundingMetrics",
    "RetrievalRecall",
    "SegmentationMetrics",
    "clone_for_stage",
    "grounding_metrics",
    "interleave_metrics",
    "retrieval_metrics",
    "segmentation_metrics",
]
