import hashlib
import json
import math
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from findlit.encoders import build_encoder
from findlit.encoders.base import TextEmbeddings, TextEncoder
from findlit.encoders.prompt_cache import FORMAT_VERSION, MANIFEST, PromptCache, PromptCacheError
from findlit.encoders.spec import EncoderSpec

VOCAB = 64


class CountingText(TextEncoder):
    """Characters -> embedding + a position term; counts every string and batch it encodes.

    A string is [BOS] + its characters, truncated to ``max_tokens``; the batch is padded to its
    longest string (on the right, or on the left with ``pad_left``), so the output of one string
    does not depend on its batch mates.
    """

    def __init__(self, seed: int = 0, dim: int = 8, max_tokens: int = 16, pad_left: bool = False):
        generator = torch.Generator().manual_seed(seed)
        model = nn.Embedding(VOCAB, dim)
        with torch.no_grad():
            model.weight.copy_(torch.randn(VOCAB, dim, generator=generator))
        super().__init__(model)
        self.dim = dim
        self.max_tokens = max_tokens
        self.pad_left = pad_left
        self.counts: Counter[str] = Counter()
        self.batches: list[int] = []

    def encode(self, texts: list[str]) -> TextEmbeddings:
        self.counts.update(texts)
        self.batches.append(len(texts))
        # [BOS] = 1, characters from 2 on, padding 0.
        rows = [[1, *(2 + ord(c) % (VOCAB - 2) for c in text)][: self.max_tokens] for text in texts]
        length = max((len(row) for row in rows), default=0)
        ids = torch.zeros(len(texts), length, dtype=torch.long)
        mask = torch.zeros(len(texts), length, dtype=torch.bool)
        for index, row in enumerate(rows):
            span = slice(length - len(row), length) if self.pad_left else slice(0, len(row))
            ids[index, span] = torch.tensor(row)
            mask[index, span] = True
        positions = torch.cumsum(mask, dim=1).float()
        tokens = self.model(ids) + 0.01 * positions.unsqueeze(-1)
        # Mean over each row's real tokens alone: a batched masked sum would round differently
        # for different padded lengths, and the cache compares bit for bit.
        sentence = torch.stack([row[keep].mean(0) for row, keep in zip(tokens, mask, strict=True)])
        return TextEmbeddings(tokens, mask, sentence)

    @property
    def encoded(self) -> int:
        return sum(self.counts.values())

    @property
    def spec(self) -> EncoderSpec:
        return EncoderSpec(
            "text",
            "test/counting",
            self.weights_digest(),
            self.max_tokens,
            self.compute_dtype,
            {"pad_left": self.pad_left},
        )


def assert_same(got: TextEmbeddings, expected: TextEmbeddings) -> None:
    assert got.tokens.dtype == torch.float32 and got.mask.dtype == torch.bool
    assert got.tokens.shape == expected.tokens.shape
    assert torch.equal(got.mask, expected.mask)
    assert torch.equal(got.tokens, expected.tokens)
    assert torch.equal(got.sentence, expected.sentence)


def test_each_distinct_string_is_encoded_once_across_calls() -> None:
    encoder = CountingText()
    cache = PromptCache(encoder, batch_size=4)
    cache(["cat", "dog", "cat"])
    cache(["dog", "bird", "cat", "bird"])
    cache(["fish", "cat", "dog", "bird", "fish"])
    assert encoder.counts == Counter({"cat": 1, "dog": 1, "bird": 1, "fish": 1})
    stats = cache.stats
    # Every requested position is a hit or a miss; a repeated miss is encoded once.
    assert (stats.hits, stats.misses, stats.encoded, stats.batches) == (5, 7, 4, 3)
    assert len(cache) == 4 and "bird" in cache and "horse" not in cache


def test_ten_thousand_class_names_take_one_pass_then_pure_lookups() -> None:
    encoder = CountingText()
    names = [f"class {i}" for i in range(10_000)]
    cache = PromptCache(encoder, batch_size=256)
    first = cache(names)
    assert len(encoder.batches) == math.ceil(10_000 / 256)
    assert max(encoder.batches) == 256 and encoder.encoded == 10_000
    second = cache(names)
    third = cache(names[::-1])
    assert len(encoder.batches) == math.ceil(10_000 / 256) and encoder.encoded == 10_000
    assert_same(second, first)
    assert torch.equal(third.sentence, first.sentence.flip(0))
    stats = cache.stats
    assert (stats.hits, stats.misses, stats.encoded) == (20_000, 10_000, 10_000)


def test_output_equals_direct_encoding_for_mixed_hits_misses_and_duplicates() -> None:
    encoder = CountingText()
    reference = CountingText()
    cache = PromptCache(encoder, batch_size=3)
    cache(["a", "a much longer prompt than the rest", "mid size"])
    texts = ["mid size", "new", "a", "new", "brand new longer one", "a", "", "mid size"]
    got = cache(texts)
    assert_same(got, reference(texts))
    # L is the longest requested string ([BOS] + 20 characters, truncated to max_tokens = 16).
    assert got.tokens.shape[:2] == (len(texts), 16)
    # Padding positions hold zeros and mask False.
    short = texts.index("a")
    assert not got.mask[short, 2:].any() and not got.tokens[short, 2:].any()
    assert set(encoder.counts.values()) == {1} and len(encoder.counts) == 6


def test_order_is_preserved_for_shuffled_requests() -> None:
    encoder = CountingText()
    cache = PromptCache(encoder, batch_size=7)
    names = [f"name {i}" * (1 + i % 3) for i in range(50)]
    cache(names[:25])
    shuffled = names[:]
    random.Random(0).shuffle(shuffled)
    assert_same(cache(shuffled), CountingText()(shuffled))
    together = cache(shuffled)
    for row, text in enumerate(shuffled):
        alone = cache([text])
        length = alone.tokens.shape[1]
        assert torch.equal(alone.tokens[0], together.tokens[row, :length])
        assert torch.equal(alone.sentence[0], together.sentence[row])
        assert not together.tokens[row, length:].any() and not together.mask[row, length:].any()


def test_left_padding_encoder_gives_the_same_real_tokens_right_padded() -> None:
    encoder = CountingText(pad_left=True)
    texts = ["x", "longer text", "mid"]
    direct = CountingText(pad_left=True)(texts)
    got = PromptCache(encoder)(texts)
    assert torch.equal(got.sentence, direct.sentence)
    assert torch.equal(got.mask.sum(1), direct.mask.sum(1))
    for row in range(len(texts)):
        assert torch.equal(got.tokens[row][got.mask[row]], direct.tokens[row][direct.mask[row]])
        assert got.mask[row, : int(got.mask[row].sum())].all()


def test_empty_request_and_one_string_request() -> None:
    cache = PromptCache(CountingText(dim=5))
    empty = cache([])
    assert empty.tokens.shape == (0, 0, 5) and empty.mask.shape == (0, 0) and empty.sentence.shape == (0, 5)
    with pytest.raises(TypeError):
        cache("not a list")


def test_outputs_do_not_alias_the_cache() -> None:
    cache = PromptCache(CountingText())
    first = cache(["cat"])
    first.tokens.zero_()
    first.sentence.zero_()
    assert_same(cache(["cat"]), CountingText()(["cat"]))


def test_sentences_equal_the_full_lookup_count_alike_and_do_not_alias() -> None:
    encoder = CountingText()
    cache = PromptCache(encoder)
    texts = ["cat", "a dog", "cat", "the red bird"]
    full = cache(texts).sentence
    hits = cache.stats.hits
    sentences = cache.sentences(texts)
    assert sentences.dtype == torch.float32 and torch.equal(sentences, full)
    assert cache.stats.hits == hits + len(texts) and encoder.counts["cat"] == 1
    sentences.zero_()
    assert torch.equal(cache.sentences(texts), full)
    assert cache.sentences(["new words"]).shape == (1, full.shape[1]) and encoder.counts["new words"] == 1
    assert cache.sentences([]).shape == (0, full.shape[1])


def test_lru_bound_is_respected_and_evicted_entries_are_re_encoded() -> None:
    encoder = CountingText()
    cache = PromptCache(encoder, max_entries=3, batch_size=2)
    cache(["a", "b", "c"])
    cache(["a"])  # a becomes the most recently used, b the least
    cache(["dd"])
    assert len(cache) == 3 and "b" not in cache and all(t in cache for t in ["a", "c", "dd"])
    assert cache.stats.evicted == 1
    cache(["b"])  # evicts c
    assert encoder.counts["b"] == 2 and encoder.counts["a"] == 1 and "c" not in cache
    # A request larger than the bound is still answered in full; the last encoded stay.
    texts = [f"t{i}" for i in range(10)]
    assert_same(cache(texts), CountingText()(texts))
    assert len(cache) == 3 and all(t in cache for t in texts[-3:])
    # memory_bytes: real tokens ([BOS] + characters) and the sentence vector of each entry, float32.
    dim, element = 8, 4
    assert cache.memory_bytes == sum((1 + len(t)) * dim * element + dim * element for t in texts[-3:])


def test_zero_max_entries_keeps_nothing_but_answers() -> None:
    encoder = CountingText()
    cache = PromptCache(encoder, max_entries=0)
    assert_same(cache(["a", "b", "a"]), CountingText()(["a", "b", "a"]))
    cache(["a"])
    assert len(cache) == 0 and cache.memory_bytes == 0 and encoder.counts["a"] == 2


def test_another_spec_never_hits_and_namespaces_stay_separate() -> None:
    first, second = CountingText(seed=0), CountingText(seed=1)
    assert first.spec.fingerprint() != second.spec.fingerprint()
    cache = PromptCache(first)
    texts = ["cat", "dog"]
    assert_same(cache(texts), CountingText(seed=0)(texts))
    cache.encoder = second
    assert "cat" not in cache
    assert_same(cache(texts), CountingText(seed=1)(texts))
    assert second.counts == Counter(texts)
    cache.encoder = first
    assert_same(cache(texts), CountingText(seed=0)(texts))
    assert first.counts == Counter(texts) and len(cache) == 4


def test_a_spec_change_without_a_new_encoder_object_is_a_new_namespace() -> None:
    encoder = CountingText()
    cache = PromptCache(encoder)
    cache(["cat"])
    encoder.max_tokens = 2  # changes the output and the spec
    assert_same(cache(["cat"]), CountingText(max_tokens=2)(["cat"]))
    assert encoder.counts["cat"] == 2


def test_float16_storage_halves_memory_and_is_close() -> None:
    texts = [f"class {i}" for i in range(20)]
    full, half = PromptCache(CountingText()), PromptCache(CountingText(), storage_dtype="float16")
    exact, rounded = full(texts), half(texts)
    assert half.memory_bytes * 2 == full.memory_bytes
    assert rounded.tokens.dtype == torch.float32
    assert torch.equal(rounded.mask, exact.mask)
    assert torch.allclose(rounded.tokens, exact.tokens, atol=1e-2)
    assert torch.allclose(rounded.sentence, exact.sentence, atol=1e-2)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="storage_dtype"):
        PromptCache(CountingText(), storage_dtype="int8")
    with pytest.raises(ValueError, match="batch_size"):
        PromptCache(CountingText(), batch_size=0)
    with pytest.raises(ValueError, match="max_entries"):
        PromptCache(CountingText(), max_entries=-1)
    with pytest.raises(ValueError, match="no directory"):
        PromptCache(CountingText()).save()


def test_clear_forgets_entries_and_stats() -> None:
    encoder = CountingText()
    cache = PromptCache(encoder)
    cache(["a", "b"])
    cache.clear()
    assert len(cache) == 0 and cache.memory_bytes == 0 and cache.stats.encoded == 0
    cache(["a"])
    assert encoder.counts["a"] == 2


# -- persistence ---------------------------------------------------------------------------------


def saved_cache(directory: Path, texts: list[str], **options: Any) -> Path:
    cache = PromptCache(CountingText(), directory=directory, **options)
    cache(texts)
    (folder,) = cache.save()
    return folder


def entries_file(folder: Path) -> Path:
    return folder / json.loads((folder / MANIFEST).read_text())["file"]


def test_persistence_round_trip_answers_with_zero_encodes(tmp_path: Path) -> None:
    texts = [f"class {i}" for i in range(300)] + ["", "ünïcödé ✓", "a\nnew line"]
    folder = saved_cache(tmp_path, texts, batch_size=64)
    encoder = CountingText()
    assert folder == tmp_path / encoder.spec.fingerprint()
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["format_version"] == FORMAT_VERSION and manifest["count"] == len(texts)
    assert manifest["spec"] == encoder.spec.to_dict() and manifest["dim"] == 8
    reopened = PromptCache(encoder, directory=tmp_path)
    assert len(reopened) == len(texts) and reopened.stats.loaded == len(texts)
    request = texts[::-1] + texts[:5]
    assert_same(reopened(request), CountingText()(request))
    assert encoder.encoded == 0


def test_resave_replaces_the_entries_file_and_leaves_no_temporaries(tmp_path: Path) -> None:
    cache = PromptCache(CountingText(), directory=tmp_path)
    cache(["a", "b"])
    (folder,) = cache.save()
    old = entries_file(folder)
    cache(["c"])
    cache.save()
    new = entries_file(folder)
    assert new != old and not old.exists()
    assert sorted(p.name for p in folder.iterdir()) == sorted([MANIFEST, new.name])
    assert PromptCache(CountingText(), directory=tmp_path).load() == 3


def test_persisted_cache_of_another_spec_is_not_used(tmp_path: Path) -> None:
    texts = ["cat", "dog"]
    saved_cache(tmp_path, texts)
    other = CountingText(seed=1)
    cache = PromptCache(other, directory=tmp_path)
    assert len(cache) == 0
    assert_same(cache(texts), CountingText(seed=1)(texts))
    assert other.counts == Counter(texts)
    # Both specs now live side by side in the same directory.
    cache.save()
    assert len(list(tmp_path.iterdir())) == 2


def test_a_spec_met_later_is_loaded_on_first_use(tmp_path: Path) -> None:
    first_cache = PromptCache(CountingText(seed=1), directory=tmp_path)
    first_cache(["cat"])
    first_cache.encoder = CountingText(seed=2)
    first_cache(["cat"])
    assert len(first_cache.save()) == 2
    encoder = CountingText(seed=2)
    cache = PromptCache(CountingText(seed=1), directory=tmp_path)
    cache.encoder = encoder
    assert_same(cache(["cat"]), CountingText(seed=2)(["cat"]))
    assert encoder.encoded == 0 and cache.stats.loaded == 2


def test_manifest_with_another_spec_in_the_folder_is_an_error(tmp_path: Path) -> None:
    folder = saved_cache(tmp_path, ["cat"])
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["spec"]["weights_digest"] = "0" * 64
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(PromptCacheError, match="another encoder spec") as error:
        PromptCache(CountingText(), directory=tmp_path)
    assert str(folder / MANIFEST) in str(error.value) and "weights_digest" in str(error.value)


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_corrupt_entries_file_is_an_error_naming_it(tmp_path: Path, damage: str) -> None:
    path = entries_file(saved_cache(tmp_path, [f"class {i}" for i in range(50)]))
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:])
    else:
        path.unlink()
    with pytest.raises(PromptCacheError) as error:
        PromptCache(CountingText(), directory=tmp_path)
    assert str(path) in str(error.value) and error.value.file == str(path)


def test_entries_file_that_passes_the_checksum_but_not_the_format_is_an_error(tmp_path: Path) -> None:
    folder = saved_cache(tmp_path, ["cat"])
    garbage = b"not a safetensors file"
    (folder / "entries-garbage.safetensors").write_bytes(garbage)
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest.update(file="entries-garbage.safetensors", sha256=hashlib.sha256(garbage).hexdigest())
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(PromptCacheError, match="cannot read the prompt cache entries"):
        PromptCache(CountingText(), directory=tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{ truncated", "cannot read the prompt cache manifest"),
        ('{"format_version": 1}', "lacks"),
        ("[]", "lacks"),
    ],
)
def test_corrupt_manifest_is_an_error_naming_it(tmp_path: Path, content: str, message: str) -> None:
    folder = saved_cache(tmp_path, ["cat"])
    (folder / MANIFEST).write_text(content)
    with pytest.raises(PromptCacheError, match=message) as error:
        PromptCache(CountingText(), directory=tmp_path)
    assert error.value.file == str(folder / MANIFEST)


def test_other_format_version_or_storage_dtype_is_an_error(tmp_path: Path) -> None:
    folder = saved_cache(tmp_path, ["cat"])
    with pytest.raises(PromptCacheError, match="storage_dtype='float16'"):
        PromptCache(CountingText(), directory=tmp_path, storage_dtype="float16")
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(PromptCacheError, match="format version"):
        PromptCache(CountingText(), directory=tmp_path)


def test_float16_storage_round_trip(tmp_path: Path) -> None:
    texts = [f"class {i}" for i in range(40)]
    cache = PromptCache(CountingText(), directory=tmp_path, storage_dtype="float16")
    before = cache(texts)
    cache.save()
    encoder = CountingText()
    after = PromptCache(encoder, directory=tmp_path, storage_dtype="float16")(texts)
    assert_same(after, before)
    assert encoder.encoded == 0


def test_loading_more_than_max_entries_keeps_the_most_recent(tmp_path: Path) -> None:
    saved_cache(tmp_path, ["a", "b", "c", "d"], batch_size=1)
    cache = PromptCache(CountingText(), directory=tmp_path, max_entries=2)
    assert len(cache) == 2 and cache.stats.loaded == 4


# -- the real default text encoder ---------------------------------------------------------------


# Importing transformers and loading MiniLM alone takes 3-4 s on 2 CPU cores.
@pytest.mark.slow
def test_real_default_text_encoder_cached_equals_fresh(tmp_path: Path) -> None:
    encoder = build_encoder("hf_text")
    assert isinstance(encoder, TextEncoder)
    names = [f"class {i}" for i in range(100)] + ["a person riding a horse on the beach", "", "traffic light"]
    request = names + names[:10]
    cache = PromptCache(encoder, batch_size=32, directory=tmp_path)
    first = cache(request)
    direct = encoder(request)
    # Other batch mates mean other padded widths inside the model: equal up to float rounding.
    assert first.tokens.shape == direct.tokens.shape and torch.equal(first.mask, direct.mask)
    assert torch.allclose(first.tokens, direct.tokens, atol=1e-5)
    assert torch.allclose(first.sentence, direct.sentence, atol=1e-5)
    assert cache.stats.encoded == len(names) and cache.stats.batches == math.ceil(len(names) / 32)
    # Cached passes return exactly what was stored, in the requested order.
    again = cache(names[::-1])
    assert cache.stats.encoded == len(names)
    assert torch.equal(again.sentence, first.sentence[: len(names)].flip(0))
    assert torch.equal(again.tokens, first.tokens[: len(names)].flip(0))
    cache.save()
    reopened = PromptCache(encoder, directory=tmp_path)
    assert_same(reopened(request), first)
    assert reopened.stats.encoded == 0


def test_a_damaged_cache_met_later_keeps_raising(tmp_path: Path) -> None:
    other = PromptCache(CountingText(seed=1), directory=tmp_path)
    other(["cat"])
    (folder,) = other.save()
    (folder / MANIFEST).write_text("{")
    cache = PromptCache(CountingText(seed=0), directory=tmp_path)
    cache.encoder = CountingText(seed=1)
    for _ in range(2):
        with pytest.raises(PromptCacheError):
            cache(["cat"])
