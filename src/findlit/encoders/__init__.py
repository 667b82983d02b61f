"""Frozen foundation-model encoders behind two contracts, their registry and their caches."""

from findlit.encoders.base import STRIDES, FrozenEncoder, TextEmbeddings, TextEncoder, VisionEncoder
from findlit.encoders.prompt_cache import PromptCache, PromptCacheError
from findlit.encoders.registry import EncoderConfig, build_encoder, encoder_class, register
from findlit.encoders.spec import EncoderSpec, weights_digest

__all__ = [
    "STRIDES",
    "EncoderConfig",
    "EncoderSpec",
    "FrozenEncoder",
    "PromptCache",
    "PromptCacheError",
    "TextEmbeddings",
    "TextEncoder",
    "VisionEncoder",
    "build_encoder",
    "encoder_class",
    "register",
    "weights_digest",
]
