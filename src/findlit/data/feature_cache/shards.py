"""The on-disk shard format: a .bin of raw records, its .json sidecar, and whether a shard is done.

Shard ``s`` holds records [s * S, (s + 1) * S) (S = the shard size) as ``shard-0000s.bin``: per
record, level after level (``res2`` .. ``res5``), the features float16[C_l, H/s_l, W/s_l] (or
float32) flattened one after the other. Its sidecar ``shard-0000s.json`` gives the size and
sha256 of the .bin and per record the image id, offset, sizes and a crc32 of its bytes.

The .bin is written by the atomic writer (:mod:`findlit.atomic_files`: temporary name, fsync,
rename), and only then is its sidecar written (the same way). A shard is done only when its sidecar exists,
carries this manifest's key, describes this shard's records, and the .bin has the recorded size
(and sha256, when verified), so a writer killed at any moment leaves nothing that passes.
"""

from __future__ import annotations

import hashlib
import json
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from findlit.atomic_files import AtomicFile, write_bytes_atomic
from findlit.data.feature_cache.errors import CorruptShardError
from findlit.data.feature_cache.manifest import FORMAT, VERSION
from findlit.data.records import ImageInfo

ShardState = Literal["done", "missing", "corrupt", "stale"]


def shard_name(shard: int) -> str:
    """``shard-00000``: the name of ``shard``'s files without their suffix."""
    return f"shard-{shard:05d}"


def shard_paths(folder: Path, shard: int) -> tuple[Path, Path]:
    """(data file, sidecar) of ``shard``."""
    return folder / f"{shard_name(shard)}.bin", folder / f"{shard_name(shard)}.json"


def file_sha256(path: Path) -> str:
    """sha256 of the file at ``path``, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class ShardIndex:
    """The sidecar of one shard: what its .bin holds and where.

    Offsets are in elements of the cache dtype; -1 marks an image that failed to decode
    (``errors`` holds its message).
    """

    shard: int
    key: str
    start: int
    nbytes: int
    sha256: str
    image_ids: list[int]
    offsets: list[int]
    sizes: list[tuple[int, int]]
    """(h, w) of each image after the resize, before padding."""
    orig_sizes: list[tuple[int, int]]
    crc32: list[int]
    errors: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.image_ids)

    def to_json(self) -> bytes:
        """The sidecar's bytes."""
        payload = {
            "format": FORMAT,
            "version": VERSION,
            "shard": self.shard,
            "key": self.key,
            "start": self.start,
            "count": len(self.image_ids),
            "nbytes": self.nbytes,
            "sha256": self.sha256,
            "image_ids": self.image_ids,
            "offsets": self.offsets,
            "sizes": [list(s) for s in self.sizes],
            "orig_sizes": [list(s) for s in self.orig_sizes],
            "crc32": self.crc32,
            "errors": {str(slot): message for slot, message in self.errors.items()},
        }
        return json.dumps(payload, separators=(",", ":")).encode()

    @classmethod
    def load(cls, path: Path) -> ShardIndex:
        """Read a sidecar; an unreadable or malformed one is a :class:`CorruptShardError`."""
        try:
            data = json.loads(path.read_bytes())
            index = cls(
                shard=int(data["shard"]),
                key=str(data["key"]),
                start=int(data["start"]),
                nbytes=int(data["nbytes"]),
                sha256=str(data["sha256"]),
                image_ids=[int(i) for i in data["image_ids"]],
                offsets=[int(o) for o in data["offsets"]],
                sizes=[(int(h), int(w)) for h, w in data["sizes"]],
                orig_sizes=[(int(h), int(w)) for h, w in data["orig_sizes"]],
                crc32=[int(c) for c in data["crc32"]],
                errors={int(slot): str(message) for slot, message in data.get("errors", {}).items()},
            )
            lengths = {len(index.image_ids), len(index.offsets), len(index.sizes), len(index.crc32)}
            if len(lengths) != 1 or int(data["count"]) != len(index.image_ids):
                raise ValueError("its per-record lists differ in length")
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise CorruptShardError(path, f"unreadable sidecar ({error})") from None
        return index


class ShardWriter:
    """Appends records to a temporary .bin, then commits it and its sidecar atomically."""

    def __init__(self, folder: Path, shard: int, start: int, count: int, key: str, dtype: np.dtype[Any]):
        self.shard, self.start, self.count, self.key, self.dtype = shard, start, count, key, dtype
        self.data_path, self.sidecar_path = shard_paths(folder, shard)
        self.output = AtomicFile(self.data_path)
        self.sha = hashlib.sha256()
        self.offset = 0
        self.nbytes = 0
        self.image_ids = [0] * count
        self.offsets = [-1] * count
        self.sizes = [(0, 0)] * count
        self.orig_sizes = [(0, 0)] * count
        self.crc32 = [0] * count
        self.errors: dict[int, str] = {}
        self.written = [False] * count
        self.started = time.perf_counter()

    def add(
        self,
        position: int,
        image_id: int,
        size: tuple[int, int],
        orig_size: tuple[int, int],
        record: np.ndarray,
    ) -> None:
        """Append one record (all levels, flattened, in the cache dtype) for dataset ``position``."""
        slot = position - self.start
        payload = np.ascontiguousarray(record, dtype=self.dtype).tobytes()
        self.output.file.write(payload)
        self.sha.update(payload)
        self.nbytes += len(payload)
        self.image_ids[slot], self.offsets[slot] = image_id, self.offset
        self.sizes[slot], self.orig_sizes[slot] = size, orig_size
        self.crc32[slot] = zlib.crc32(payload)
        self.written[slot] = True
        self.offset += record.size

    def add_error(self, position: int, image_id: int, message: str) -> None:
        """Mark an image that failed to decode (policy ``skip``); reading it raises a DataError."""
        slot = position - self.start
        self.image_ids[slot] = image_id
        self.errors[slot] = message
        self.written[slot] = True

    def commit(self) -> ShardIndex:
        """Rename the .bin into place, then write the sidecar: from then on the shard is done."""
        if not all(self.written):
            raise RuntimeError(f"shard {self.shard}: {self.written.count(False)} records were never written")
        # An old sidecar must never describe the new bytes, even for an instant.
        self.sidecar_path.unlink(missing_ok=True)
        self.output.commit()
        index = ShardIndex(
            shard=self.shard,
            key=self.key,
            start=self.start,
            nbytes=self.nbytes,
            sha256=self.sha.hexdigest(),
            image_ids=self.image_ids,
            offsets=self.offsets,
            sizes=self.sizes,
            orig_sizes=self.orig_sizes,
            crc32=self.crc32,
            errors=self.errors,
        )
        write_bytes_atomic(self.sidecar_path, index.to_json())
        return index

    def abort(self) -> None:
        """Drop the temporary file (after an exception; a killed process leaves it, and it is ignored)."""
        self.output.abort()


def shard_state(
    folder: Path,
    images: Sequence[ImageInfo],
    manifest: Mapping[str, Any],
    key: str,
    shard: int,
    *,
    verify: bool,
) -> tuple[ShardState, str, Path, ShardIndex | None]:
    """Whether ``shard`` is done: (state, the problem or "", the file at fault, its sidecar if done).

    Args:
        folder: the cache folder.
        images: the dataset's images in record order.
        manifest: the cache's manifest.
        key: :func:`~findlit.data.feature_cache.manifest.manifest_key` of ``manifest``.
        shard: the shard to check.
        verify: also check the .bin's sha256 (reads it whole); otherwise only its size.

    """
    data_path, sidecar_path = shard_paths(folder, shard)
    if not sidecar_path.exists():
        return "missing", "no sidecar", sidecar_path, None
    try:
        index = ShardIndex.load(sidecar_path)
    except CorruptShardError as error:
        return "corrupt", error.problem, sidecar_path, None
    if index.key != key:
        return "stale", f"its manifest key is {index.key}, the manifest's is {key}", sidecar_path, None
    shard_size = int(manifest["storage"]["shard_size"])
    start = shard * shard_size
    count = min(shard_size, len(images) - start)
    if index.shard != shard or index.start != start or len(index) != count:
        problem = f"sidecar describes records [{index.start}, {index.start + len(index)})"
        return "corrupt", problem + f", expected [{start}, {start + count})", sidecar_path, None
    if index.image_ids != [info.id for info in images[start : start + count]]:
        return "corrupt", "sidecar lists other image ids than the dataset's records", sidecar_path, None
    try:
        nbytes = data_path.stat().st_size
    except FileNotFoundError:
        return "missing", "no data file", data_path, None
    if nbytes != index.nbytes:
        return "corrupt", f"truncated: {nbytes} bytes, its sidecar says {index.nbytes}", data_path, None
    if verify and file_sha256(data_path) != index.sha256:
        return "corrupt", "sha256 checksum mismatch", data_path, None
    return "done", "", data_path, index
