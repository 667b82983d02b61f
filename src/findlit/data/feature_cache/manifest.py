"""What identifies cached features: the preprocessing, the dataset digest and the manifest.

``manifest.json`` records the encoder spec, the preprocessing, the dataset digest, the storage
(dtype, shard size, shard count) and the pyramid levels. The first writer creates it; every other
writer, and every reader, compares its own configuration with it, and any difference is a
:class:`~findlit.data.feature_cache.StaleCacheError` listing the differing fields.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from findlit.atomic_files import AtomicFile, remove_dead_leftovers
from findlit.data.feature_cache.errors import FeatureCacheError, StaleCacheError, stale_message
from findlit.data.records import ImageInfo
from findlit.data.transforms import Resize, TransformConfig
from findlit.encoders.base import STRIDES
from findlit.encoders.spec import EncoderSpec
from findlit.errors import ConfigError

FORMAT = "findlit.feature_cache"
VERSION = 1
DEFAULT_SHARD_SIZE = 256
DTYPES: dict[str, np.dtype[Any]] = {"float16": np.dtype(np.float16), "float32": np.dtype(np.float32)}
MANIFEST = "manifest.json"
CacheDtype = Literal["float16", "float32"]


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


@dataclass(frozen=True)
class LevelLayout:
    """Channels and stride of each pyramid level, in storage order (the manifest's ``levels``)."""

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
        """The manifest's ``levels`` section."""
        return {level: {"stride": STRIDES[level], "channels": c} for level, c in self.channels.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping[str, int]]) -> LevelLayout:
        """The layout a manifest's ``levels`` section describes."""
        return cls({level: int(value["channels"]) for level, value in data.items()})


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


def build_manifest(
    preprocessing: Preprocessing,
    images: int,
    digest: str,
    spec: EncoderSpec,
    channels: Mapping[str, int],
    dtype: str,
    shard_size: int,
) -> dict[str, Any]:
    """The manifest of ``images`` images of ``digest``, encoded by ``spec`` and stored as asked."""
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
        "preprocessing": preprocessing.to_dict(),
        "dataset": {"images": images, "digest": digest},
        "storage": {
            "dtype": dtype,
            "shard_size": shard_size,
            "shards": -(-images // shard_size),
        },
        "levels": LevelLayout({level: int(channels[level]) for level in STRIDES}).to_dict(),
    }


def load_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest at ``path``, or None if there is none yet."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise FeatureCacheError(
            f"unreadable feature cache manifest {path}: {error}; delete the folder "
            "and run `findlit cache` again"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise FeatureCacheError(f"{path} is not a findlit feature cache manifest")
    return data


def create_or_check_manifest(folder: Path, expected: dict[str, Any], key: str | None) -> None:
    """Create the manifest if there is none (race-free across ranks), else require it to match.

    Raises:
        StaleCacheError: the manifest in ``folder`` differs from ``expected``; ``key`` (the config
            key naming the folder) is named in the message.

    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / MANIFEST
    if not path.exists():
        remove_dead_leftovers(folder, MANIFEST)
        output = AtomicFile(path)
        try:
            output.file.write(json.dumps(expected, indent=1, sort_keys=True).encode())
        except BaseException:
            output.abort()
            raise
        # created only if absent: exactly one rank's manifest lands, never a mix
        output.commit_if_absent()
    cached = load_manifest(path)
    assert cached is not None
    differences = manifest_differences(
        cached, expected, ["version", "encoder", "preprocessing", "dataset", "storage", "levels"]
    )
    if differences:
        raise StaleCacheError(stale_message(folder, key, differences))


def manifest_differences(
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
