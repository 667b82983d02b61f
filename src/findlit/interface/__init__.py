"""The FIND interface: attention prototypes compiled to masks, the decoder and its heads.

- :mod:`~findlit.interface.prototype` (and ``prototypes/*.yaml``): embedding types and who reads whom;
- :mod:`~findlit.interface.pixel_decoder`, :mod:`~findlit.interface.layers`,
  :mod:`~findlit.interface.heads`: the trainable pixel decoder, decoder layers and output heads;
- :mod:`~findlit.interface.prompts`, :mod:`~findlit.interface.visual_prompts`: text prompts by
  projection, visual prompts (masks, boxes, clicks, scribbles) into tokens from the pixel decoder's
  features;
- :mod:`~findlit.interface.find`: :class:`FINDInterface`, which puts them together.

Knows no task and no Lightning. May import encoders (strides, text embeddings), data and the
top-level helpers (errors); not losses, metrics or outputs (same layer), nor anything above.
"""

from findlit.interface.find import FINDInterface, InterfaceOutput, InterfacePrompts, PromptTokens
from findlit.interface.prototype import (
    FEATURES,
    KINDS,
    CompiledPrototype,
    Prototype,
    TypeName,
    TypeRule,
    default_prototype,
)
from findlit.interface.visual_prompts import VisualPromptEncoder, VisualPrompts

__all__ = [
    "FEATURES",
    "KINDS",
    "CompiledPrototype",
    "FINDInterface",
    "InterfaceOutput",
    "InterfacePrompts",
    "PromptTokens",
    "Prototype",
    "TypeName",
    "TypeRule",
    "VisualPromptEncoder",
    "VisualPrompts",
    "default_prototype",
]
