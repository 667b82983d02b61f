"""The FIND interface: attention prototypes compiled to masks (more modules to come)."""

from findlit.interface.prototype import (
    FEATURES,
    KINDS,
    CompiledPrototype,
    Prototype,
    TypeName,
    TypeRule,
    default_prototype,
)

__all__ = [
    "FEATURES",
    "KINDS",
    "CompiledPrototype",
    "Prototype",
    "TypeName",
    "TypeRule",
    "default_prototype",
]
