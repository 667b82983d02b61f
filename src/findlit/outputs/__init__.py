"""Writers of predictions: COCO-format results that official tools score, and overlays for people."""

from findlit.outputs.coco_writers import (
    GroundingResultsWriter,
    InstanceResultsWriter,
    PanopticWriter,
    RetrievalResultsWriter,
    encode_masks,
)
from findlit.outputs.overlay import draw_overlay, rle_json, save_overlay

__all__ = [
    "GroundingResultsWriter",
    "InstanceResultsWriter",
    "PanopticWriter",
    "RetrievalResultsWriter",
    "draw_overlay",
    "encode_masks",
    "rle_json",
    "save_overlay",
]
