"""Time the prompt cache on a vocabulary of class names: the encoding pass, then cached passes.

Usage:
    python scripts/bench/prompt_cache_speed.py [--count 10000] [--batch-size 256] [--encoders fake hf_text]

For each encoder (``fake``: a character-embedding encoder defined here; ``hf_text``: the embedded
default MiniLM, built offline with ``build_encoder("hf_text")`` and skipped with a note if it cannot
be built) prints the time of the first pass (every name encoded), of a second pass (pure lookups),
of saving the cache and of reopening it from disk, and checks the cached output against the first.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

from findlit.encoders import EncoderSpec, TextEmbeddings, TextEncoder, build_encoder
from findlit.encoders.prompt_cache import PromptCache

# Must be set before transformers looks at the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

Result = TypeVar("Result")


class CharacterText(TextEncoder):
    """[BOS] + characters -> embeddings (D = 384, like MiniLM); sentence = mean of real tokens."""

    def __init__(self, dim: int = 384, max_tokens: int = 32):
        super().__init__(nn.Embedding(258, dim))
        self.dim = dim
        self.max_tokens = max_tokens

    def encode(self, texts: list[str]) -> TextEmbeddings:
        rows = [[1, *(2 + min(ord(c), 255) for c in text)][: self.max_tokens] for text in texts]
        length = max((len(row) for row in rows), default=0)
        ids = torch.zeros(len(texts), length, dtype=torch.long)
        mask = torch.zeros(len(texts), length, dtype=torch.bool)
        for index, row in enumerate(rows):
            ids[index, : len(row)] = torch.tensor(row)
            mask[index, : len(row)] = True
        tokens = self.model(ids)
        sentence = (tokens * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        return TextEmbeddings(tokens, mask, sentence)

    @property
    def spec(self) -> EncoderSpec:
        return EncoderSpec("text", "bench/characters", self.weights_digest(), self.max_tokens, "float32")


def timed(work: Callable[[], Result]) -> tuple[Result, float]:
    start = time.perf_counter()
    result = work()
    return result, time.perf_counter() - start


def bench(label: str, encoder: TextEncoder, names: list[str], batch_size: int) -> None:
    # The weights digest is computed once, on first use of the spec; keep it out of the timed passes.
    encoder.weights_digest()
    with tempfile.TemporaryDirectory() as directory:
        cache = PromptCache(encoder, batch_size=batch_size, directory=directory)
        first, encode_seconds = timed(lambda: cache(names))
        second, lookup_seconds = timed(lambda: cache(names))
        # Later passes reuse freed memory: the second pass also pays for first-touching ~T*L*D floats.
        warm_seconds = min(timed(lambda: cache(names))[1] for _ in range(3))
        _, save_seconds = timed(cache.save)
        reopened, open_seconds = timed(
            lambda: PromptCache(encoder, batch_size=batch_size, directory=directory)
        )
        third, reopened_seconds = timed(lambda: reopened(names))
        same = all(
            torch.equal(a, b)
            for out in (second, third)
            for a, b in ((out.tokens, first.tokens), (out.mask, first.mask), (out.sentence, first.sentence))
        )
        count = len(names)
        size = f"D={first.sentence.shape[1]}, L={first.tokens.shape[1]}"
        print(
            f"{label}: {count} names, batch {batch_size}, {size}\n"
            f"  first pass (encode):  {encode_seconds:8.3f} s  ({count / encode_seconds:9.0f} names/s, "
            f"{cache.stats.batches} encoder calls)\n"
            f"  second pass (cached): {lookup_seconds:8.3f} s  ({count / lookup_seconds:9.0f} names/s, "
            f"{encode_seconds / lookup_seconds:.1f}x faster); best of 3 more: {warm_seconds:.3f} s "
            f"({encode_seconds / warm_seconds:.1f}x); {cache.stats.encoded} strings encoded in all\n"
            f"  save: {save_seconds:.3f} s; reopen from disk: {open_seconds:.3f} s; pass after reopen: "
            f"{reopened_seconds:.3f} s ({reopened.stats.encoded} encoded)\n"
            f"  memory: {cache.memory_bytes / 2**20:.1f} MiB; cached output equals the encoded one: {same}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--encoders", nargs="+", default=["fake", "hf_text"], choices=["fake", "hf_text"])
    args = parser.parse_args()
    names = [f"class {i}" for i in range(args.count)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name in args.encoders:
        if name == "fake":
            bench("fake (character embeddings)", CharacterText(), names, args.batch_size)
            continue
        try:
            encoder = build_encoder("hf_text")
        except Exception as error:  # a missing adapter or weights is a note, not a failure, here
            print(f"hf_text: skipped, cannot build the default text encoder: {error!r}")
            continue
        assert isinstance(encoder, TextEncoder)
        bench(f"hf_text ({encoder.spec.name})", encoder, names, args.batch_size)


if __name__ == "__main__":
    main()
