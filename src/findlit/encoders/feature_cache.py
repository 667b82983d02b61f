"""A memory-mapped store of a frozen vision encoder's features for every image of a dataset.

The encoders never change, so their features can be computed once. A cache folder holds one
dataset at one fixed preprocessing (the dataset's evaluation resize, then zero padding to a
multiple of ``size_divisibility``)::

    manifest.json       what the features are: encoder spec, preprocessing, dataset digest, storage
    shard-00000.bin     raw float16 arrays of records [0, S) (S = shard size), in record order slots
    shard-00000.json    its sidecar: size and sha256 of the .bin, and per record the image id, offset,
                        sizes and a crc32 of its bytes
    shard-00001.bin ...

Per record (one image) the .bin holds, level after level (``res2`` .. ``res5``), the features
float16[C_l, H/s_l, W/s_l] of the image resized to (h, w) and padded to (H, W).

Crash and concurrency safety: a shard is written under a temporary name, fsync'ed and renamed
(atomic), and only then is its sidecar written (again temporary name + rename). A shard is done only
when its sidecar exists, belongs to this manifest, and the .bin has the recorded size (and sha256,
when verified), so a writer killed at any moment leaves nothing that passes. Rank r of W writes
shards r, r + W, ... (disjoint); the first writer creates the manifest with an exclusive hard link
and every other compares its own with it. Completeness is derived from the sidecars, never stored.

A cache never silently serves features of another configuration: a manifest that differs from the
configured one (encoder spec, preprocessing, dataset digest, storage) is a :class:`StaleCacheError`
listing the differences, and nothing is overwritten.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from findlit.data.decode import read_image
from findlit.data.errors import BadRecordPolicy, ConfigError, DataError
from findlit.data.records import ImageInfo
from findlit.data.sample import Sample
from findlit.data.transforms import Resize, TransformConfig
from findlit.encoders.base import STRIDES, VisionEncoder
from findlit.encoders.spec import EncoderSpec

__all__ = [
    "CachedFeatures",
    "CorruptShardError",
    "FeatureCache",
    "FeatureCacheError",
    "FeatureReader",
    "FillReport",
    "IncompleteCacheError",
    "Preprocessing",
    "ShardResult",
    "StaleCacheError",
    "dataset_digest",
]

FORMAT = "findlit.feature_cache"
VERSION = 1
DEFAULT_SHARD_SIZE = 256
DTYPES: dict[str, np.dtype[Any]] = {"float16": np.dtype(np.float16), "float32": np.dtype(np.float32)}
MANIFEST = "manifest.json"
CacheDtype = Literal["float16", "float32"]


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


class FeatureCacheError(Exception):
    """A feature cache cannot be used as it is; the message names the folder or shard file."""


class StaleCacheError(FeatureCacheError):
    """The cache was written for another configuration (encoder, preprocessing, dataset or storage)."""


class IncompleteCacheError(FeatureCacheError):
    """The cache does not exist yet, or some of its shards are missing."""


class CorruptShardError(FeatureCacheError):
    """A shard file or its sidecar is truncated, unreadable or fails its checksum.

    Args:
        path: the shard file (or sidecar) at fault.
        problem: what is wrong with it.

    """

    def __init__(self, path: Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(
            f"corrupt feature cache shard {self.path}: {problem}. Delete it (and its .json sidecar) "
            "and run `findlit cache` again to recompute it."
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # DataLoader workers pickle errors back to the main process.
        return (type(self), (self.path, self.problem))


# ---------------------------------------------------------------------------------------------
# What identifies the cached features
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preprocessing:
    """The fixed preprocessing the cached features are computed at.

    It is the dataset's evaluation resize (random crops cannot be cached), then zero padding on
    the bottom and right to a multiple of ``size_divisibility``, as collate pads a lone image.

    Args:
        image_size: ``transforms.image_size``: the longest side (or its cap).
        eval_shortest_edge: ``transforms.eval_shortest_edge``.
        size_divisibility: the DataModule's padding multiple; a multiple of 32 (the encoders' stride).

    """

    image_size: int
    eval_shortest_edge: int | None = None
    size_divisibility: int = 32

    def __post_init__(self) -> None:
        if self.size_divisibility <= 0 or self.size_divisibility % max(STRIDES.values()):
            raise ConfigError(
                f"data.size_divisibility must be a positive multiple of {max(STRIDES.values())} "
                f"to cache features, got {self.size_divisibility}"
            )

    @classmethod
    def from_transforms(cls, transforms: TransformConfig, size_divisibility: int = 32) -> Preprocessing:
        """The evaluation preprocessing of a dataset's ``transforms``."""
        return cls(transforms.image_size, transforms.eval_shortest_edge, size_divisibility)

    def resize(self) -> Resize:
        """The resize transform (the evaluation one of :func:`~findlit.data.transforms.build_transforms`)."""
        return Resize(shortest_edge=self.eval_shortest_edge, longest_edge=self.image_size)

    def frame(self, height: int, width: int) -> tuple[int, int]:
        """(H, W): an h x w image padded to a multiple of ``size_divisibility``."""
        multiple = self.size_divisibility
        return -(-height // multiple) * multiple, -(-width // multiple) * multiple

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``preprocessing`` section."""
        return {
            "image_size": self.image_size,
            "eval_shortest_edge": self.eval_shortest_edge,
            "size_divisibility": self.size_divisibility,
            # Fixed in code today; recorded so a change of either is a stale cache, not a silent one.
            "resize": "bilinear-antialias",
            "pad_value": 0,
        }


def dataset_digest(images: Sequence[ImageInfo]) -> str:
    """sha256 over every image's id, file name, annotated size and file size, in record order.

    A different dataset, order, or a re-encoded image file gives another digest. It costs one
    ``stat`` per image and never reads pixels; a missing file counts as size -1.
    """
    digest = hashlib.sha256()
    for info in images:
        try:
            size = info.path.stat().st_size
        except OSError:
            size = -1
        digest.update(f"{info.id}|{info.path.name}|{info.height}|{info.width}|{size}\n".encode())
    return digest.hexdigest()


def manifest_key(manifest: Mapping[str, Any]) -> str:
    """Short hash of a manifest; sidecars carry it so a shard of another manifest is never used."""
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _differences(
    cached: Mapping[str, Any], expected: Mapping[str, Any], sections: Sequence[str]
) -> list[str]:
    """``"section.field: cached != configured"`` lines for the ``sections`` that differ."""
    lines: list[str] = []
    for section in sections:
        mine, theirs = cached.get(section), expected.get(section)
        if section == "encoder" and isinstance(mine, dict) and isinstance(theirs, dict):
            try:
                cached_spec, configured_spec = EncoderSpec.from_dict(mine), EncoderSpec.from_dict(theirs)
            except (KeyError, TypeError):  # a hand-edited manifest: compare the raw dicts
                lines.extend(_flat_differences(section, mine, theirs))
            else:
                lines.extend(f"encoder.{line}" for line in cached_spec.differences(configured_spec))
        else:
            lines.extend(_flat_differences(section, mine, theirs))
    return lines


def _flat_differences(prefix: str, mine: Any, theirs: Any) -> list[str]:
    if isinstance(mine, dict) and isinstance(theirs, dict):
        return [
            line
            for name in sorted(set(mine) | set(theirs))
            for line in _flat_differences(f"{prefix}.{name}", mine.get(name), theirs.get(name))
        ]
    return [] if mine == theirs else [f"{prefix}: {mine!r} != {theirs!r}"]


# ---------------------------------------------------------------------------------------------
# Shard files
# ---------------------------------------------------------------------------------------------


def _shard_paths(folder: Path, shard: int) -> tuple[Path, Path]:
    """(data file, sidecar) of ``shard``."""
    return folder / f"shard-{shard:05d}.bin", folder / f"shard-{shard:05d}.json"


def _temporary(path: Path) -> Path:
    """A name no other writer uses: ``<name>.tmp.<host>.<pid>``, never read as a shard."""
    return path.with_name(f"{path.name}.tmp.{socket.gethostname()}.{os.getpid()}")


def _write_atomic(path: Path, payload: bytes) -> None:
    """Write ``payload`` to a temporary file, fsync it and rename it to ``path`` (atomic on POSIX)."""
    temporary = _temporary(path)
    try:
        with open(temporary, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _sha256_file(path: Path) -> str:
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


@dataclass(frozen=True)
class _Levels:
    """Channels and stride of each pyramid level, in storage order."""

    channels: dict[str, int]

    def shapes(self, frame: tuple[int, int]) -> list[tuple[str, tuple[int, int, int]]]:
        """(level, (C, H/s, W/s)) for an image padded to ``frame``."""
        height, width = frame
        return [
            (level, (channels, height // STRIDES[level], width // STRIDES[level]))
            for level, channels in self.channels.items()
        ]

    def elements(self, frame: tuple[int, int]) -> int:
        """Elements one record of padded size ``frame`` takes."""
        return sum(c * h * w for _, (c, h, w) in self.shapes(frame))

    def to_dict(self) -> dict[str, dict[str, int]]:
        return {level: {"stride": STRIDES[level], "channels": c} for level, c in self.channels.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping[str, int]]) -> _Levels:
        return cls({level: int(value["channels"]) for level, value in data.items()})


class _ShardWriter:
    """Appends records to a temporary .bin, then commits it and its sidecar atomically."""

    def __init__(self, folder: Path, shard: int, start: int, count: int, key: str, dtype: np.dtype[Any]):
        self.shard, self.start, self.count, self.key, self.dtype = shard, start, count, key, dtype
        self.data_path, self.sidecar_path = _shard_paths(folder, shard)
        self.temporary = _temporary(self.data_path)
        self.handle = open(self.temporary, "wb")  # noqa: SIM115 - closed in commit/abort
        self.sha = hashlib.sha256()
        self.offset = 0
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
        self.handle.write(payload)
        self.sha.update(payload)
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
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        nbytes = self.temporary.stat().st_size
        # An old sidecar must never describe the new bytes, even for an instant.
        self.sidecar_path.unlink(missing_ok=True)
        os.replace(self.temporary, self.data_path)
        index = ShardIndex(
            shard=self.shard,
            key=self.key,
            start=self.start,
            nbytes=nbytes,
            sha256=self.sha.hexdigest(),
            image_ids=self.image_ids,
            offsets=self.offsets,
            sizes=self.sizes,
            orig_sizes=self.orig_sizes,
            crc32=self.crc32,
            errors=self.errors,
        )
        _write_atomic(self.sidecar_path, index.to_json())
        return index

    def abort(self) -> None:
        """Drop the temporary file (after an exception; a killed process leaves it, and it is ignored)."""
        self.handle.close()
        self.temporary.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


@dataclass
class CachedFeatures:
    """The cached features of one image.

    features: level -> float16 (the cache dtype) [C_l, H/s_l, W/s_l], H x W the padded size.
    image_size: (h, w) of the resized image inside the padded H x W (top left).
    orig_size: (height, width) of the image on disk.
    """

    image_id: int
    features: dict[str, Tensor]
    image_size: tuple[int, int]
    orig_size: tuple[int, int]
    frame: tuple[int, int]

    def padding_mask(self) -> Tensor:
        """bool[H,W], True on the padding (outside the top-left h x w)."""
        mask = torch.ones(self.frame, dtype=torch.bool)
        mask[: self.image_size[0], : self.image_size[1]] = False
        return mask


class FeatureReader:
    """Random access to a complete cache; shards are memory-mapped on first use.

    Only the bytes of the records read are paged in. Each read checks the record's crc32, so a
    corrupt shard is named when it is touched. Picklable: DataLoader workers re-map the shards.

    Args:
        folder: the cache folder.
        manifest: its manifest.
        shards: the sidecars of all its shards, in order.

    """

    def __init__(self, folder: Path, manifest: Mapping[str, Any], shards: Sequence[ShardIndex]):
        self.folder = Path(folder)
        self.manifest = dict(manifest)
        self.shards = list(shards)
        storage = self.manifest["storage"]
        self.shard_size = int(storage["shard_size"])
        self.dtype = DTYPES[storage["dtype"]]
        self.levels = _Levels.from_dict(self.manifest["levels"])
        self.preprocessing = Preprocessing(
            int(self.manifest["preprocessing"]["image_size"]),
            self.manifest["preprocessing"]["eval_shortest_edge"],
            int(self.manifest["preprocessing"]["size_divisibility"]),
        )
        self._positions: dict[int, int] = {}
        for index in self.shards:
            for slot, image_id in enumerate(index.image_ids):
                self._positions.setdefault(image_id, index.start + slot)
        self._maps: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return sum(len(index) for index in self.shards)

    @property
    def encoder_spec(self) -> EncoderSpec:
        """The spec of the encoder that computed the features."""
        return EncoderSpec.from_dict(self.manifest["encoder"])

    def check_encoder(self, spec: EncoderSpec, key: str | None = None) -> None:
        """Raise :class:`StaleCacheError` if the features were computed by another encoder than ``spec``."""
        differences = _differences(self.manifest, {"encoder": spec.to_dict()}, ["encoder"])
        if differences:
            raise StaleCacheError(_stale_message(self.folder, key, differences))

    def position(self, image_id: int) -> int:
        """Record position of ``image_id`` (its first occurrence)."""
        try:
            return self._positions[image_id]
        except KeyError:
            raise FeatureCacheError(
                f"image_id={image_id} is not in the feature cache {self.folder}"
            ) from None

    def read(self, position: int) -> CachedFeatures:
        """The features of the record at ``position``, checked against its crc32.

        Raises:
            DataError: the image failed to decode when the cache was filled (policy ``skip``).
            CorruptShardError: the shard is truncated or the record's bytes changed.

        """
        if not 0 <= position < len(self):
            raise IndexError(f"position {position} is out of range for the feature cache of {len(self)}")
        shard, slot = divmod(position, self.shard_size)
        index = self.shards[shard]
        image_id = index.image_ids[slot]
        if slot in index.errors:
            raise DataError(
                f"image failed to decode when cached: {index.errors[slot]}", None, f"image_id={image_id}"
            )
        size = index.sizes[slot]
        frame = self.preprocessing.frame(*size)
        count = self.levels.elements(frame)
        offset = index.offsets[slot]
        data_path = _shard_paths(self.folder, shard)[0]
        values = self._map(shard)[offset : offset + count]
        if values.size != count:
            raise CorruptShardError(
                data_path, f"truncated: record {slot} (image_id={image_id}) ends past the end"
            )
        if zlib.crc32(values.data) != index.crc32[slot]:
            raise CorruptShardError(data_path, f"record {slot} (image_id={image_id}) fails its checksum")
        # One copy out of the page cache; the levels are views into it.
        flat = torch.from_numpy(np.array(values))
        features: dict[str, Tensor] = {}
        start = 0
        for level, shape in self.levels.shapes(frame):
            length = shape[0] * shape[1] * shape[2]
            features[level] = flat[start : start + length].view(shape)
            start += length
        return CachedFeatures(image_id, features, size, index.orig_sizes[slot], frame)

    def _map(self, shard: int) -> np.ndarray:
        if shard not in self._maps:
            path = _shard_paths(self.folder, shard)[0]
            if self.shards[shard].nbytes == 0:  # every image of the shard failed to decode
                self._maps[shard] = np.zeros(0, dtype=self.dtype)
            else:
                self._maps[shard] = np.memmap(path, dtype=self.dtype, mode="r")
        return self._maps[shard]

    def __getstate__(self) -> dict[str, Any]:
        # A pickled memmap would copy the whole shard; the receiving process maps it again.
        state = self.__dict__.copy()
        state["_maps"] = {}
        return state


# ---------------------------------------------------------------------------------------------
# Filling
# ---------------------------------------------------------------------------------------------


@dataclass
class ShardResult:
    """What happened to one shard in :meth:`FeatureCache.fill`.

    status: ``computed`` or ``reused``; note: why an existing shard was recomputed, if it was.
    """

    shard: int
    status: Literal["computed", "reused"]
    images: int
    bad_images: int
    nbytes: int
    seconds: float
    note: str | None = None


@dataclass
class FillReport:
    """Summary of one rank's :meth:`FeatureCache.fill`."""

    folder: Path
    rank: int
    world_size: int
    images: int
    """Images in the dataset (all ranks)."""
    shards: int
    """Shards in the cache (all ranks)."""
    results: list[ShardResult] = field(default_factory=list)
    seconds: float = 0.0
    complete: bool = False
    """True when every shard of every rank was done at the end of this call."""

    @property
    def computed(self) -> list[ShardResult]:
        """The shards this call computed."""
        return [r for r in self.results if r.status == "computed"]

    @property
    def reused(self) -> list[ShardResult]:
        """The shards this call found done and valid."""
        return [r for r in self.results if r.status == "reused"]

    @property
    def nbytes(self) -> int:
        """Bytes written by this call."""
        return sum(r.nbytes for r in self.computed)


class _PreprocessedImages(TorchDataset[tuple[int, Tensor | None, tuple[int, int], str | None]]):
    """Decode and resize the images at ``positions`` (in DataLoader workers when asked)."""

    def __init__(
        self, images: Sequence[ImageInfo], positions: Sequence[int], resize: Resize, key: str | None
    ):
        self.images, self.positions, self.resize, self.key = images, list(positions), resize, key

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, item: int) -> tuple[int, Tensor | None, tuple[int, int], str | None]:
        position = self.positions[item]
        try:
            image = read_image(self.images[position], self.key)
        except DataError as error:
            # DataError does not survive pickling between processes; its message names file and record.
            return position, None, (0, 0), str(error)
        resized = self.resize(Sample(image=image), torch.Generator())["image"]
        return position, resized, (int(image.shape[1]), int(image.shape[2])), None


def _as_is(item: Any) -> Any:
    return item


ShardState = Literal["done", "missing", "corrupt", "stale"]


class FeatureCache:
    """The feature cache of one dataset: fill it, check it, open it for reading.

    Creating the object touches nothing on disk; the dataset digest (one ``stat`` per image) is
    computed on first use.

    Args:
        folder: the cache folder (created by :meth:`fill`).
        images: the dataset's images in record order (``record.image`` of each record).
        preprocessing: the fixed preprocessing the features are computed at.
        key: the config key that names the folder (``data.train[0].features``), for messages.

    """

    def __init__(
        self,
        folder: str | Path,
        images: Sequence[ImageInfo],
        preprocessing: Preprocessing,
        key: str | None = None,
    ):
        self.folder = Path(folder)
        self.images = tuple(images)
        self.preprocessing = preprocessing
        self.key = key
        self._digest: str | None = None

    @property
    def digest(self) -> str:
        """:func:`dataset_digest` of the images."""
        if self._digest is None:
            self._digest = dataset_digest(self.images)
        return self._digest

    @property
    def manifest_path(self) -> Path:
        """Where the manifest is."""
        return self.folder / MANIFEST

    def read_manifest(self) -> dict[str, Any] | None:
        """The manifest on disk, or None if there is none yet."""
        try:
            data = json.loads(self.manifest_path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            raise FeatureCacheError(
                f"unreadable feature cache manifest {self.manifest_path}: {error}; delete the folder "
                "and run `findlit cache` again"
            ) from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise FeatureCacheError(f"{self.manifest_path} is not a findlit feature cache manifest")
        return data

    def expected_manifest(
        self, spec: EncoderSpec, channels: Mapping[str, int], dtype: str, shard_size: int
    ) -> dict[str, Any]:
        """The manifest this configuration writes."""
        if dtype not in DTYPES:
            raise ConfigError(f"feature cache dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if shard_size <= 0:
            raise ConfigError(f"feature cache shard size must be positive, got {shard_size}")
        missing = sorted(set(STRIDES) - set(channels))
        if missing:
            raise ConfigError(f"the vision encoder declares no channels for levels {missing}")
        return {
            "format": FORMAT,
            "version": VERSION,
            "encoder": spec.to_dict(),
            "preprocessing": self.preprocessing.to_dict(),
            "dataset": {"images": len(self.images), "digest": self.digest},
            "storage": {
                "dtype": dtype,
                "shard_size": shard_size,
                "shards": -(-len(self.images) // shard_size),
            },
            "levels": _Levels({level: int(channels[level]) for level in STRIDES}).to_dict(),
        }

    # -- reading ---------------------------------------------------------------------------------

    def open(self, encoder_spec: EncoderSpec | None = None, *, verify: bool = False) -> FeatureReader:
        """Check the cache against this configuration and return a reader.

        Args:
            encoder_spec: also require this encoder (the DataModule does not know the model's
                encoder; see :meth:`FeatureReader.check_encoder`).
            verify: also check every shard's sha256 (reads the whole cache); by default only sizes
                are checked here and each record's crc32 when it is read.

        Raises:
            IncompleteCacheError: no manifest, or shards missing.
            StaleCacheError: written for another encoder, preprocessing or dataset.
            CorruptShardError: a truncated shard or an unreadable sidecar.

        """
        manifest = self.read_manifest()
        if manifest is None:
            raise IncompleteCacheError(
                f"no feature cache at {self.folder}{self._named_by()} (no {MANIFEST}); fill it with "
                "`findlit cache --config <experiment.yaml> --split <split>`"
            )
        expected: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "preprocessing": self.preprocessing.to_dict(),
            "dataset": {"images": len(self.images), "digest": self.digest},
        }
        sections = ["version", "preprocessing", "dataset"]
        if encoder_spec is not None:
            expected["encoder"] = encoder_spec.to_dict()
            sections.insert(1, "encoder")
        differences = _differences(manifest, expected, sections)
        if differences:
            raise StaleCacheError(_stale_message(self.folder, self.key, differences))
        key = manifest_key(manifest)
        storage = manifest["storage"]
        shards: list[ShardIndex] = []
        missing: list[int] = []
        for shard in range(int(storage["shards"])):
            state, problem, path, index = self._shard_state(manifest, key, shard, verify=verify)
            if state == "missing":
                missing.append(shard)
            elif state == "stale":
                raise StaleCacheError(
                    f"{path} belongs to another configuration ({problem}); delete {self.folder} and run "
                    "`findlit cache` again"
                )
            elif state == "corrupt":
                raise CorruptShardError(path, problem)
            else:
                assert index is not None
                shards.append(index)
        if missing:
            raise IncompleteCacheError(
                f"feature cache {self.folder}{self._named_by()} is incomplete: {len(missing)} of "
                f"{storage['shards']} shards missing ({_short_list(missing)}); finish it with "
                "`findlit cache` (it resumes where it stopped)"
            )
        return FeatureReader(self.folder, manifest, shards)

    def _named_by(self) -> str:
        return f" (set by {self.key})" if self.key else ""

    def _shard_state(
        self, manifest: Mapping[str, Any], key: str, shard: int, *, verify: bool
    ) -> tuple[ShardState, str, Path, ShardIndex | None]:
        """Whether ``shard`` is done: (state, the problem or "", the file at fault, its sidecar if done)."""
        data_path, sidecar_path = _shard_paths(self.folder, shard)
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
        count = min(shard_size, len(self.images) - start)
        if index.shard != shard or index.start != start or len(index) != count:
            problem = f"sidecar describes records [{index.start}, {index.start + len(index)})"
            return "corrupt", problem + f", expected [{start}, {start + count})", sidecar_path, None
        if index.image_ids != [info.id for info in self.images[start : start + count]]:
            return "corrupt", "sidecar lists other image ids than the dataset's records", sidecar_path, None
        try:
            nbytes = data_path.stat().st_size
        except FileNotFoundError:
            return "missing", "no data file", data_path, None
        if nbytes != index.nbytes:
            return "corrupt", f"truncated: {nbytes} bytes, its sidecar says {index.nbytes}", data_path, None
        if verify and _sha256_file(data_path) != index.sha256:
            return "corrupt", "sha256 checksum mismatch", data_path, None
        return "done", "", data_path, index

    def missing_shards(self) -> list[int]:
        """Shards that are not done (sizes checked, not checksums); all of them without a manifest."""
        manifest = self.read_manifest()
        if manifest is None:
            return []
        key = manifest_key(manifest)
        return [
            shard
            for shard in range(int(manifest["storage"]["shards"]))
            if self._shard_state(manifest, key, shard, verify=False)[0] != "done"
        ]

    # -- writing ---------------------------------------------------------------------------------

    def _create_or_check_manifest(self, expected: dict[str, Any]) -> None:
        """Create the manifest if there is none (race-free across ranks), else require it to match."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if not self.manifest_path.exists():
            temporary = _temporary(self.manifest_path)
            try:
                temporary.write_bytes(json.dumps(expected, indent=1, sort_keys=True).encode())
                # link() fails if the name exists: exactly one rank's manifest lands, never a mix.
                os.link(temporary, self.manifest_path)
            except FileExistsError:
                pass
            except OSError as error:
                if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                    raise
                # File systems without hard links: the rename is still atomic.
                os.replace(temporary, self.manifest_path)
            finally:
                temporary.unlink(missing_ok=True)
        cached = self.read_manifest()
        assert cached is not None
        differences = _differences(
            cached, expected, ["version", "encoder", "preprocessing", "dataset", "storage", "levels"]
        )
        if differences:
            raise StaleCacheError(_stale_message(self.folder, self.key, differences))

    def fill(
        self,
        encoder: VisionEncoder,
        *,
        rank: int = 0,
        world_size: int = 1,
        batch_size: int = 8,
        shard_size: int | None = None,
        dtype: CacheDtype | None = None,
        device: str | torch.device | None = None,
        num_workers: int = 0,
        on_bad_image: BadRecordPolicy = "error",
        progress: Callable[[ShardResult], None] | None = None,
    ) -> FillReport:
        """Compute this rank's shards that are not done yet; done and valid shards are kept.

        Rank ``r`` of ``world_size`` owns shards ``r, r + world_size, ...``, so ranks never write
        the same file. An existing shard is kept only if its sidecar belongs to this manifest and
        its size and sha256 match; otherwise it is recomputed (the result says why).

        Args:
            encoder: the frozen vision encoder.
            rank: this process's rank.
            world_size: number of processes filling the cache together.
            batch_size: images per encoder call (images of one padded size are batched together).
            shard_size: images per shard (default: the existing manifest's, else 256).
            dtype: storage dtype (default: the existing manifest's, else ``float16``).
            device: where to run the encoder (default: where it is).
            num_workers: DataLoader workers decoding the images.
            on_bad_image: ``error`` stops at an image that fails to decode; ``skip`` stores it as
                bad, and reading it raises a :class:`DataError` (the dataset's policy applies).
            progress: called after each shard of this rank (reused or computed).

        Raises:
            StaleCacheError: the folder holds a cache of another configuration.

        """
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        started = time.perf_counter()
        existing = self.read_manifest()
        storage = existing.get("storage", {}) if existing is not None else {}
        expected = self.expected_manifest(
            encoder.spec,
            encoder.channels,
            dtype or storage.get("dtype", "float16"),
            shard_size or int(storage.get("shard_size", DEFAULT_SHARD_SIZE)),
        )
        self._create_or_check_manifest(expected)
        key = manifest_key(expected)
        shards = int(expected["storage"]["shards"])
        report = FillReport(self.folder, rank, world_size, len(self.images), shards)
        todo: list[int] = []
        notes: dict[int, str] = {}
        for shard in range(rank, shards, world_size):
            state, problem, path, index = self._shard_state(expected, key, shard, verify=True)
            if state == "done":
                assert index is not None
                result = ShardResult(
                    shard, "reused", len(index) - len(index.errors), len(index.errors), 0, 0.0
                )
                report.results.append(result)
                if progress is not None:
                    progress(result)
            else:
                todo.append(shard)
                if state != "missing":
                    notes[shard] = f"recomputed {path.name}: {problem}"
                _remove_dead_temporaries(self.folder, shard)
        if todo:
            self._compute(
                encoder,
                expected,
                key,
                todo,
                notes,
                batch_size=batch_size,
                device=device,
                num_workers=num_workers,
                on_bad_image=on_bad_image,
                results=report.results,
                progress=progress,
            )
        report.results.sort(key=lambda r: r.shard)
        report.seconds = time.perf_counter() - started
        report.complete = not self.missing_shards()
        return report

    def _compute(
        self,
        encoder: VisionEncoder,
        manifest: Mapping[str, Any],
        key: str,
        todo: Sequence[int],
        notes: Mapping[int, str],
        *,
        batch_size: int,
        device: str | torch.device | None,
        num_workers: int,
        on_bad_image: BadRecordPolicy,
        results: list[ShardResult],
        progress: Callable[[ShardResult], None] | None,
    ) -> None:
        """Encode the shards ``todo`` one after the other, committing each as soon as it is full."""
        storage = manifest["storage"]
        shard_size, dtype = int(storage["shard_size"]), DTYPES[storage["dtype"]]
        levels = _Levels.from_dict(manifest["levels"])
        if device is not None:
            encoder.to(device)
        target = encoder.device
        ranges = {s: (s * shard_size, min((s + 1) * shard_size, len(self.images))) for s in todo}
        positions = [p for s in todo for p in range(*ranges[s])]
        loader = DataLoader(
            _PreprocessedImages(self.images, positions, self.preprocessing.resize(), self.key),
            batch_size=None,
            num_workers=num_workers,
            collate_fn=_as_is,
        )
        writer: _ShardWriter | None = None
        buckets: dict[tuple[int, int], list[tuple[int, Tensor, tuple[int, int]]]] = {}

        def flush(frame: tuple[int, int]) -> None:
            items = buckets.pop(frame, [])
            if not items:
                return
            assert writer is not None
            for (position, image, orig_size), record in zip(
                items,
                _encode(encoder, [image for _, image, _ in items], frame, levels, target, dtype),
                strict=True,
            ):
                size = (int(image.shape[1]), int(image.shape[2]))
                writer.add(position, self.images[position].id, size, orig_size, record)

        def finish() -> None:
            assert writer is not None
            for frame in list(buckets):
                flush(frame)
            index = writer.commit()
            result = ShardResult(
                writer.shard,
                "computed",
                len(index) - len(index.errors),
                len(index.errors),
                index.nbytes,
                time.perf_counter() - writer.started,
                notes.get(writer.shard),
            )
            results.append(result)
            if progress is not None:
                progress(result)

        try:
            for position, image, orig_size, error in loader:
                shard = position // shard_size
                if writer is None or writer.shard != shard:
                    if writer is not None:
                        finish()
                    start, end = ranges[shard]
                    writer = _ShardWriter(self.folder, shard, start, end - start, key, dtype)
                if error is not None:
                    if on_bad_image == "error":
                        raise DataError(error, None, key=self.key)
                    writer.add_error(position, self.images[position].id, error)
                    continue
                assert image is not None
                frame = self.preprocessing.frame(int(image.shape[1]), int(image.shape[2]))
                buckets.setdefault(frame, []).append((position, image, orig_size))
                if len(buckets[frame]) >= batch_size:
                    flush(frame)
            if writer is not None:
                finish()
                writer = None
        except BaseException:
            if writer is not None:
                writer.abort()
            raise


def _encode(
    encoder: VisionEncoder,
    images: Sequence[Tensor],
    frame: tuple[int, int],
    levels: _Levels,
    device: torch.device,
    dtype: np.dtype[Any],
) -> Iterator[np.ndarray]:
    """Encode uint8[3,h,w] images padded to ``frame``; yield each image's flattened record.

    A record is the levels' float[C_l, H/s_l, W/s_l] one after the other, in the cache dtype.
    """
    height, width = frame
    batch = torch.stack(
        [F.pad(image, (0, width - image.shape[2], 0, height - image.shape[1]), value=0) for image in images]
    )
    features = encoder(batch.to(device).float().div_(255))
    torch_dtype = torch.float16 if dtype == np.float16 else torch.float32
    flat: list[Tensor] = []
    for level, shape in levels.shapes(frame):
        value = features[level]
        if tuple(value.shape) != (len(images), *shape):
            raise FeatureCacheError(
                f"the encoder returned {level} of shape {tuple(value.shape)} for images of {height}x{width}; "
                f"expected {(len(images), *shape)} (channels {shape[0]}, stride {STRIDES[level]})"
            )
        stored = value.to(torch_dtype)
        if not bool(torch.isfinite(stored).all()):
            raise FeatureCacheError(
                f"{level} features are not finite in {torch_dtype} (overflow above 65504 in float16?); "
                "cache them as float32"
            )
        flat.append(stored.flatten(1).cpu())
    records = torch.cat(flat, dim=1).numpy()
    yield from records


def _remove_dead_temporaries(folder: Path, shard: int) -> None:
    """Delete temporary files of ``shard`` left by killed writers on this host (never a live one's)."""
    host = socket.gethostname()
    for path in folder.glob(f"shard-{shard:05d}.*.tmp.*"):
        owner = path.name.split(".tmp.", 1)[1]
        writer_host, _, pid = owner.rpartition(".")
        if writer_host != host or not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale_message(folder: Path, key: str | None, differences: Sequence[str]) -> str:
    named = f" (set by {key})" if key else ""
    lines = "\n".join(f"  {line}" for line in differences)
    pointer = key or "the dataset's features"
    return (
        f"stale feature cache at {folder}{named}: it was computed for another configuration "
        f"(cached != configured):\n{lines}\n"
        f"It is never reused or overwritten. Delete {folder} and run "
        f"`findlit cache --config <experiment.yaml> --split <split>` again, or point {pointer} "
        "at another folder."
    )


def _short_list(values: Sequence[int], limit: int = 8) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f", ... (+{len(values) - limit})" if len(values) > limit else "")
