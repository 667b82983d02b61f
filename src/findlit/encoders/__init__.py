"""Frozen foundation-model encoders behind two contracts, their registry and their caches.

- :mod:`~findlit.encoders.base`: the ``VisionEncoder`` / ``TextEncoder`` contracts and what frozen means;
- adapters: ``timm`` (the embedded default), ``open_clip``, ``sam``, Hugging Face text models, and a
  simple feature pyramid for single-stride ViTs;
- :mod:`~findlit.encoders.registry`: encoders by name; :mod:`~findlit.encoders.spec`: what identifies an
  encoder's output; :mod:`~findlit.encoders.checkpoint`: checkpoints record specs, not weights;
- :mod:`~findlit.encoders.prompt_cache`: text-prompt embeddings, each string encoded once per spec.

May import only the top-level helpers (errors); not data, nor anything above.
"""

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
