"""Writers of predictions: COCO-format results that official tools score, and overlays for people.

``TestResultsWriter`` (the Lightning callback of ``findlit test``) is imported on first use, so that
the writers stay usable without importing Lightning.

May import encoders, data (records, pixel decoding) and the top-level helpers (errors); not
interface, losses or metrics (same layer), nor anything above (tasks, training, inference, cli).
"""

from typing import Any

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
    "TestResultsWriter",
    "draw_overlay",
    "encode_masks",
    "rle_json",
    "save_overlay",
]


def __getattr__(name: str) -> Any:
    if name == "TestResultsWriter":
        from findlit.outputs.test_results import TestResultsWriter

        return TestResultsWriter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
