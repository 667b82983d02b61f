"""The FIND interface: attention prototypes compiled to masks, the decoder and its heads."""

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
