"""A cache of text-prompt embeddings: each distinct string is encoded once per encoder spec.

APE encodes every prompt on its own ("independent prompts"), so the embedding of a class name
does not depend on the other names in the batch. A vocabulary of thousands of class names then
costs one encoding pass; every later batch is a lookup.

Layout of a persisted cache (``directory`` given)::

    <directory>/<spec fingerprint>/manifest.json
    <directory>/<spec fingerprint>/entries-<sha256[:16]>.safetensors

The manifest (format version, spec dict, count, dim, storage dtype, entries file name and its
sha256) is written last and atomically, so a reader sees either the previous complete cache or
the new one, never a half-written one.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from findlit.atomic_files import write_bytes_atomic
from findlit.encoders.base import DTYPES, TextEmbeddings, TextEncoder
from findlit.encoders.spec import EncoderSpec
from findlit.errors import CacheError

FORMAT_VERSION = 1
"""Version of the on-disk layout; a manifest with another version is an error."""

MANIFEST = "manifest.json"


class PromptCacheError(CacheError, RuntimeError):
    """A persisted prompt cache that cannot be used; names the offending file.

    Args:
        message: what is wrong.
        file: the manifest or entries file; None when the error is rebuilt from its message alone
            (see :mod:`findlit.errors`).

    """

    def __init__(self, message: str, file: str | Path | None = None):
        self.file = None if file is None else str(file)
        if file is None:
            super().__init__(message)
            return
        super().__init__(
            f"{message} [file {self.file}]; delete the folder {Path(file).parent} to rebuild the cache"
        )


@dataclass
class PromptCacheStats:
    """Counters of a :class:`PromptCache` (cumulative until :meth:`PromptCache.clear`).

    Args:
        hits: requested strings answered from memory (each position of a request counts).
        misses: requested strings that were not in memory (a string repeated in one request counts
            at every position, but is encoded once).
        encoded: strings sent to the encoder.
        batches: calls of the encoder.
        evicted: entries dropped by the LRU bound.
        loaded: entries read from ``directory``.

    """

    hits: int = 0
    misses: int = 0
    encoded: int = 0
    batches: int = 0
    evicted: int = 0
    loaded: int = 0


class _Entry(NamedTuple):
    """One cached string: its real tokens only (no padding), on CPU in the storage dtype.

    tokens: float[n,D], n = number of real tokens.
    sentence: float[D].
    """

    tokens: Tensor
    sentence: Tensor

    @property
    def nbytes(self) -> int:
        return self.tokens.numel() * self.tokens.element_size() + (
            self.sentence.numel() * self.sentence.element_size()
        )


class PromptCache:
    """Embeddings of text prompts, encoded once per (encoder spec, exact string), then looked up.

    ``cache(texts)`` returns the same :class:`TextEmbeddings` as ``encoder(texts)``: tokens
    float[T,L,D], mask bool[T,L], sentence float[T,D], in the order of ``texts`` (duplicates
    allowed), float32, on the encoder's device, L = the most real tokens among ``texts``, zeros and
    mask False on padding. Padding is always on the right: an encoder that pads on the left gives
    the same real tokens in the same order, moved to the front. With ``storage_dtype="float32"``
    the values are exactly those the encoder returned when the string was encoded (a real model
    may differ from a fresh call with other batch mates by float rounding, ~1e-6, no more).

    Namespaces: entries are keyed by ``encoder.spec.fingerprint()`` and the string, and the spec is
    read at every call. Assigning another encoder to ``cache.encoder`` (or changing what its spec
    depends on) switches to another namespace: entries made with one spec never answer for
    another, and come back into use if the first spec returns. All namespaces share one LRU
    bound. On disk each spec has its own subfolder, so one ``directory`` can serve several
    encoders.

    Persistence: :meth:`save` writes a snapshot of the in-memory entries (entries evicted from
    memory are not written, and the previous file is replaced). The constructor loads the current
    spec's folder; a spec met later (another encoder) is loaded on its first use. A manifest or
    entries file that is unreadable, truncated, fails its sha256, has another format version,
    another spec or another storage dtype raises :class:`PromptCacheError` naming the file: a
    damaged cache usually means a full disk or a second writer, which should be seen rather than
    silently re-encoded over.

    Threads and processes: keep one cache in the main process, next to the encoder it calls (the
    module or the predictor that owns the model); do not put it in a ``Dataset``, where every
    DataLoader worker would get its own copy (and a copy of the encoder). It is not thread-safe:
    call it from the thread that runs the model. Under DDP every rank holds its own cache; let one
    rank :meth:`save` (writes are atomic, so readers on other ranks or nodes never see half a
    file; with several concurrent writers the last one wins and earlier entries files may be left
    behind).

    Args:
        encoder: the frozen text encoder that fills the cache.
        max_entries: most strings kept in memory (all namespaces together); the least recently
            used are dropped beyond it (0 keeps nothing).
        batch_size: most strings per encoder call when encoding misses.
        directory: folder to persist to and load from; None keeps the cache in memory only.
        storage_dtype: dtype of the stored tensors (``float32``, ``float16`` or ``bfloat16``);
            outputs are float32 whatever it is. float16 halves memory at the cost of exactness.

    """

    def __init__(
        self,
        encoder: TextEncoder,
        max_entries: int = 100_000,
        batch_size: int = 256,
        directory: str | Path | None = None,
        storage_dtype: str = "float32",
    ):
        if max_entries < 0:
            raise ValueError(f"max_entries must be >= 0, got {max_entries}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if storage_dtype not in DTYPES:
            raise ValueError(f"storage_dtype must be one of {sorted(DTYPES)}, got {storage_dtype!r}")
        self.encoder = encoder
        self.max_entries = max_entries
        self.batch_size = batch_size
        self.directory = Path(directory) if directory is not None else None
        self.storage_dtype = storage_dtype
        # One LRU over (fingerprint, text): the oldest entry is first.
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._specs: dict[str, EncoderSpec] = {}
        self._loaded: set[str] = set()
        self._memory_bytes = 0
        self._stats = PromptCacheStats()
        if self.directory is not None:
            self.load()

    # -- lookups ---------------------------------------------------------------------------------

    def __call__(self, texts: Sequence[str]) -> TextEmbeddings:
        """Embeddings of ``texts`` in order: tokens float[T,L,D], mask bool[T,L], sentence float[T,D]."""
        return self._assemble(self._lookup(texts))

    def sentences(self, texts: Sequence[str]) -> Tensor:
        """float32[T,D] sentence vectors of ``texts`` in order, on the encoder's device.

        Equal to ``self(texts).sentence`` without padding the tokens into a batch, which dominates
        a lookup of thousands of class names when only their sentence vectors are used.
        """
        entries = self._lookup(texts)
        if not entries:
            return torch.zeros(0, int(self.encoder.dim), device=self.encoder.device)
        # stack allocates, so callers never alias the cache
        return torch.stack([entry.sentence for entry in entries]).to(self.encoder.device).float()

    def _lookup(self, texts: Sequence[str]) -> list[_Entry]:
        """The entry of every text in order, encoding the misses (counts hits and misses)."""
        if isinstance(texts, str):
            raise TypeError("texts should be a list of strings, not one string")
        texts = list(texts)
        fingerprint = self._namespace()
        found: dict[str, _Entry] = {}
        missing: dict[str, None] = {}  # an ordered set
        for text in texts:
            key = (fingerprint, text)
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                found[text] = entry
                self._stats.hits += 1
            else:
                missing[text] = None
                self._stats.misses += 1
        # Misses are remembered locally too: with a small max_entries the LRU may already have
        # dropped some of them (or some hits) by the time the output is assembled.
        found.update(self._encode(fingerprint, list(missing)))
        return [found[text] for text in texts]

    def __contains__(self, text: object) -> bool:
        """Whether ``text`` is in memory for the current encoder's spec (does not touch the LRU)."""
        return isinstance(text, str) and (self._namespace(load=False), text) in self._entries

    def __len__(self) -> int:
        """Number of strings in memory, all namespaces together."""
        return len(self._entries)

    @property
    def memory_bytes(self) -> int:
        """Bytes of the stored tensors (tokens and sentence vectors; Python object overhead aside)."""
        return self._memory_bytes

    @property
    def stats(self) -> PromptCacheStats:
        """A copy of the counters."""
        return replace(self._stats)

    def clear(self) -> None:
        """Forget every entry in memory (all namespaces) and reset :attr:`stats`.

        Files in ``directory`` are left as they are and not re-read (call :meth:`load` for that).
        """
        self._entries.clear()
        self._memory_bytes = 0
        self._stats = PromptCacheStats()

    def _namespace(self, load: bool = True) -> str:
        """Fingerprint of the current encoder's spec; loads its persisted entries on first use."""
        spec = self.encoder.spec
        fingerprint = spec.fingerprint()
        self._specs[fingerprint] = spec
        if load and self.directory is not None and fingerprint not in self._loaded:
            self.load()
        return fingerprint

    def _encode(self, fingerprint: str, texts: list[str]) -> dict[str, _Entry]:
        """Encode ``texts`` (distinct) in chunks of ``batch_size`` and store them."""
        # Similar lengths in one chunk waste less compute on padding.
        texts = sorted(texts, key=len)
        dtype = DTYPES[self.storage_dtype]
        encoded: dict[str, _Entry] = {}
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start : start + self.batch_size]
            embeddings = self.encoder(chunk)
            tokens = embeddings.tokens.to("cpu", dtype)
            mask = embeddings.mask.to("cpu")
            sentence = embeddings.sentence.to("cpu", dtype)
            self._stats.batches += 1
            self._stats.encoded += len(chunk)
            for row, text in enumerate(chunk):
                # Boolean indexing copies, so an entry never keeps the whole chunk alive.
                entry = _Entry(tokens[row][mask[row]], sentence[row].clone())
                encoded[text] = entry
                self._store((fingerprint, text), entry)
        return encoded

    def _store(self, key: tuple[str, str], entry: _Entry) -> None:
        previous = self._entries.pop(key, None)
        if previous is not None:
            self._memory_bytes -= previous.nbytes
        self._entries[key] = entry
        self._memory_bytes += entry.nbytes
        while len(self._entries) > self.max_entries:
            _, dropped = self._entries.popitem(last=False)
            self._memory_bytes -= dropped.nbytes
            self._stats.evicted += 1

    def _assemble(self, entries: list[_Entry]) -> TextEmbeddings:
        """Pad per-string entries into one batch on the encoder's device (float32)."""
        device = self.encoder.device
        if not entries:
            dim = int(self.encoder.dim)
            return TextEmbeddings(
                tokens=torch.zeros(0, 0, dim, device=device),
                mask=torch.zeros(0, 0, dtype=torch.bool, device=device),
                sentence=torch.zeros(0, dim, device=device),
            )
        lengths = torch.tensor([entry.tokens.shape[0] for entry in entries], dtype=torch.long)
        # pad_sequence pads with zeros and always allocates, so callers never alias the cache.
        tokens = pad_sequence([entry.tokens for entry in entries], batch_first=True)
        sentence = torch.stack([entry.sentence for entry in entries])
        # Move in the storage dtype (half the bytes for float16), convert on the device.
        tokens = tokens.to(device).float()
        sentence = sentence.to(device).float()
        positions = torch.arange(tokens.shape[1], device=device)
        mask = positions.unsqueeze(0) < lengths.to(device).unsqueeze(1)
        return TextEmbeddings(tokens=tokens, mask=mask, sentence=sentence)

    # -- persistence -----------------------------------------------------------------------------

    def folder(self, spec: EncoderSpec | None = None) -> Path:
        """The subfolder of ``directory`` for ``spec`` (default: the current encoder's)."""
        if self.directory is None:
            raise ValueError("this PromptCache has no directory")
        spec = spec if spec is not None else self.encoder.spec
        return self.directory / spec.fingerprint()

    def save(self) -> list[Path]:
        """Write the in-memory entries of every namespace that has any; returns the folders written.

        Each folder gets an entries file (safetensors, named by its sha256) and then the manifest,
        both written atomically (:mod:`findlit.atomic_files`); the entries file the previous manifest
        named is deleted afterwards.
        """
        if self.directory is None:
            raise ValueError("this PromptCache has no directory to save to")
        by_namespace: dict[str, list[tuple[str, _Entry]]] = {}
        for (fingerprint, text), entry in self._entries.items():
            by_namespace.setdefault(fingerprint, []).append((text, entry))
        return [self._save_namespace(self._specs[fp], items) for fp, items in by_namespace.items()]

    def _save_namespace(self, spec: EncoderSpec, items: list[tuple[str, _Entry]]) -> Path:
        folder = self.folder(spec)
        folder.mkdir(parents=True, exist_ok=True)
        names = [text.encode("utf-8", "surrogatepass") for text, _ in items]
        entries = [entry for _, entry in items]
        tensors = {
            # Real tokens of every string, concatenated: float[sum n, D].
            "tokens": torch.cat([entry.tokens for entry in entries]).contiguous(),
            "token_counts": torch.tensor([entry.tokens.shape[0] for entry in entries], dtype=torch.long),
            "sentence": torch.stack([entry.sentence for entry in entries]).contiguous(),
            # The strings as UTF-8 bytes: safetensors holds tensors only.
            "text_bytes": _bytes_tensor(b"".join(names)),
            "text_lengths": torch.tensor([len(name) for name in names], dtype=torch.long),
        }
        data = save_safetensors(tensors, metadata={"format_version": str(FORMAT_VERSION)})
        digest = hashlib.sha256(data).hexdigest()
        entries_name = f"entries-{digest[:16]}.safetensors"
        manifest_path = folder / MANIFEST
        previous = _previous_entries_name(manifest_path)
        write_bytes_atomic(folder / entries_name, data)
        manifest = {
            "format_version": FORMAT_VERSION,
            "fingerprint": spec.fingerprint(),
            "spec": spec.to_dict(),
            "count": len(items),
            "dim": int(tensors["sentence"].shape[1]),
            "storage_dtype": self.storage_dtype,
            "file": entries_name,
            "sha256": digest,
            "bytes": len(data),
        }
        write_bytes_atomic(manifest_path, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
        if previous is not None and previous != entries_name:
            (folder / previous).unlink(missing_ok=True)
        return folder

    def load(self) -> int:
        """Read the current encoder's persisted entries into memory; returns how many were read.

        Entries already in memory are kept; loaded ones become the most recently used (so if the
        file holds more than ``max_entries``, its oldest entries are dropped). A missing folder or
        manifest reads nothing. Raises :class:`PromptCacheError` for an unusable manifest or file.
        """
        if self.directory is None:
            raise ValueError("this PromptCache has no directory to load from")
        spec = self.encoder.spec
        fingerprint = spec.fingerprint()
        self._specs[fingerprint] = spec
        manifest_path = self.folder(spec) / MANIFEST
        if not manifest_path.is_file():
            self._loaded.add(fingerprint)
            return 0
        manifest = self._read_manifest(manifest_path, spec)
        items = self._read_entries(manifest_path.parent / manifest["file"], manifest)
        # Marked only on success: a damaged cache keeps raising until it is removed.
        self._loaded.add(fingerprint)
        for text, entry in items:
            key = (fingerprint, text)
            if key not in self._entries:
                self._store(key, entry)
        self._stats.loaded += len(items)
        return len(items)

    def _read_manifest(self, path: Path, spec: EncoderSpec) -> dict[str, Any]:
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise PromptCacheError(f"cannot read the prompt cache manifest: {error}", path) from error
        required = ("format_version", "spec", "count", "storage_dtype", "file", "sha256")
        if not isinstance(manifest, dict) or any(key not in manifest for key in required):
            raise PromptCacheError(f"the prompt cache manifest lacks some of {list(required)}", path)
        if manifest["format_version"] != FORMAT_VERSION:
            raise PromptCacheError(
                f"prompt cache format version {manifest['format_version']!r}, this findlit reads "
                f"{FORMAT_VERSION}",
                path,
            )
        if manifest["spec"] != spec.to_dict():
            try:
                differences = "; ".join(spec.differences(EncoderSpec.from_dict(manifest["spec"])))
            except (KeyError, TypeError):
                differences = "unreadable spec"
            raise PromptCacheError(
                f"the prompt cache manifest was made for another encoder spec ({differences})", path
            )
        if manifest["storage_dtype"] != self.storage_dtype:
            raise PromptCacheError(
                f"the prompt cache was stored in {manifest['storage_dtype']}, this cache uses "
                f"storage_dtype={self.storage_dtype!r}; use the same dtype or another directory",
                path,
            )
        name = manifest["file"]
        if not isinstance(name, str) or Path(name).name != name or not name:
            raise PromptCacheError(f"the prompt cache manifest names a bad entries file {name!r}", path)
        return manifest

    def _read_entries(self, path: Path, manifest: dict[str, Any]) -> list[tuple[str, _Entry]]:
        try:
            data = path.read_bytes()
        except OSError as error:
            raise PromptCacheError(f"cannot read the prompt cache entries: {error}", path) from error
        if hashlib.sha256(data).hexdigest() != manifest["sha256"]:
            raise PromptCacheError(
                f"the prompt cache entries file is corrupt or truncated ({len(data)} bytes, "
                f"sha256 differs from the manifest's)",
                path,
            )
        try:
            tensors = load_safetensors(data)
            counts = tensors["token_counts"].tolist()
            text_lengths = tensors["text_lengths"].tolist()
            raw = tensors["text_bytes"].numpy().tobytes()
            tokens, sentence = tensors["tokens"], tensors["sentence"]
        except (SafetensorError, KeyError) as error:
            raise PromptCacheError(f"cannot read the prompt cache entries: {error!r}", path) from error
        count = manifest["count"]
        consistent = (
            len(counts) == len(text_lengths) == sentence.shape[0] == count
            and sum(counts) == tokens.shape[0]
            and sum(text_lengths) == len(raw)
            and tokens.dtype == sentence.dtype == DTYPES[self.storage_dtype]
            and (count == 0 or tokens.shape[1] == sentence.shape[1])
        )
        if not consistent:
            raise PromptCacheError("the prompt cache entries file does not match its manifest", path)
        items: list[tuple[str, _Entry]] = []
        offset = 0
        try:
            # clone(): each entry owns its memory, so eviction frees it and memory_bytes stays true.
            for row, (n_bytes, text_tokens) in enumerate(
                zip(text_lengths, torch.split(tokens, counts), strict=True)
            ):
                text = raw[offset : offset + n_bytes].decode("utf-8", "surrogatepass")
                offset += n_bytes
                items.append((text, _Entry(text_tokens.clone(), sentence[row].clone())))
        except (RuntimeError, UnicodeDecodeError) as error:
            raise PromptCacheError(f"cannot read the prompt cache entries: {error!r}", path) from error
        return items


def _previous_entries_name(manifest_path: Path) -> str | None:
    """The entries file a manifest names, or None if there is no readable manifest."""
    try:
        name = json.loads(manifest_path.read_text(encoding="utf-8")).get("file")
    except (OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) and name and Path(name).name == name else None


def _bytes_tensor(data: bytes) -> Tensor:
    """uint8[len(data)] holding ``data`` (``torch.frombuffer`` rejects an empty buffer)."""
    if not data:
        return torch.zeros(0, dtype=torch.uint8)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)
