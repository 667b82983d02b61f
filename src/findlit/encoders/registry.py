"""Encoders by name: ``build_encoder("timm", model="tf_efficientnet_lite0", ...)``.

Adapters register themselves under a short name; the keyword arguments are the adapter's
constructor arguments, checked against its signature so a misspelt key is named.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from findlit.encoders.base import FrozenEncoder
from findlit.errors import ConfigError

_REGISTRY: dict[str, type[FrozenEncoder]] = {}
# Adapters live in modules that import heavy libraries; they are imported on first use.
_MODULES: dict[str, str] = {
    "timm": "findlit.encoders.timm_vision",
    "open_clip_vision": "findlit.encoders.open_clip",
    "open_clip_text": "findlit.encoders.open_clip",
    "sam": "findlit.encoders.sam",
    "hf_text": "findlit.encoders.hf_text",
}

EncoderType = TypeVar("EncoderType", bound=type[FrozenEncoder])


def register(name: str) -> Callable[[EncoderType], EncoderType]:
    """Class decorator: make an adapter buildable as ``name``."""

    def decorate(cls: EncoderType) -> EncoderType:
        _REGISTRY[name] = cls
        return cls

    return decorate


def encoder_class(name: str) -> type[FrozenEncoder]:
    """The adapter registered as ``name``."""
    if name not in _REGISTRY and name in _MODULES:
        importlib.import_module(_MODULES[name])
    if name not in _REGISTRY:
        raise ConfigError(f"unknown encoder {name!r}; known: {sorted(set(_MODULES) | set(_REGISTRY))}")
    return _REGISTRY[name]


def build_encoder(name: str, key: str = "encoder", **options: Any) -> FrozenEncoder:
    """Build the adapter registered as ``name`` with ``options``.

    Unknown options are a :class:`ConfigError` naming ``<key>.<option>``.
    """
    cls = encoder_class(name)
    parameters = inspect.signature(cls.__init__).parameters
    unknown = sorted(set(options) - set(parameters) - {"self"})
    if unknown:
        accepted = sorted(p for p in parameters if p != "self")
        raise ConfigError(
            f"{key}: encoder {name!r} has no option(s) {', '.join(f'{key}.{u}' for u in unknown)}; "
            f"it accepts {accepted}"
        )
    return cls(**options)


@dataclass
class EncoderConfig:
    """An encoder in a config: the registry name and the adapter's options.

    Args:
        name: ``timm``, ``open_clip_vision``, ``open_clip_text``, ``sam`` or ``hf_text``.
        options: keyword arguments of that adapter's constructor.

    """

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def build(self, key: str = "encoder") -> FrozenEncoder:
        """Build the encoder; errors name ``<key>.<option>``."""
        return build_encoder(self.name, key=key, **self.options)
