"""Interactive segmentation's pieces outside the network: strokes drawn from masks, simulated clicks.

- :mod:`~findlit.interactive.strokes`: a visual prompt (points, box, scribble, polygon, mask) drawn
  from an object's mask, as FIND's ``datasets/visual_sampler`` draws its training strokes;
- :mod:`~findlit.interactive.clicks`: the next click from a prediction's errors (RITM's and SEEM's
  rule) and click masks, for training rounds and for the click-counting evaluation;
- :mod:`~findlit.interactive.entities`: which phrases of an interleaved prompt become visual
  prompts (FIND's ``VISUAL_PROB``), with their strokes.

NumPy and SciPy only. May import the top-level helpers (errors); not encoders or data (same layer),
nor anything above.
"""

from findlit.interactive.clicks import Click, click_masks, next_click
from findlit.interactive.entities import VISUAL_PLACEHOLDER, draw_entity_strokes
from findlit.interactive.strokes import STROKE_KINDS, StrokeSampling, draw_stroke

__all__ = [
    "STROKE_KINDS",
    "VISUAL_PLACEHOLDER",
    "Click",
    "StrokeSampling",
    "click_masks",
    "draw_entity_strokes",
    "draw_stroke",
    "next_click",
]
