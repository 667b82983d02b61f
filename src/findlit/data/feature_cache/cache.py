"""The feature cache of one dataset: the folder, its manifest, and opening or filling it."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from findlit.data.errors import BadRecordPolicy
from findlit.data.feature_cache.errors import (
    CorruptShardError,
    IncompleteCacheError,
    StaleCacheError,
    stale_message,
)
from findlit.data.feature_cache.fill import FillReport, ShardResult, fill_shards
from findlit.data.feature_cache.manifest import (
    DEFAULT_SHARD_SIZE,
    FORMAT,
    MANIFEST,
    VERSION,
    CacheDtype,
    Preprocessing,
    build_manifest,
    create_or_check_manifest,
    dataset_digest,
    load_manifest,
    manifest_differences,
    manifest_key,
)
from findlit.data.feature_cache.reader import FeatureReader
from findlit.data.feature_cache.shards import ShardIndex, shard_state
from findlit.data.records import ImageInfo
from findlit.encoders.base import VisionEncoder
from findlit.encoders.spec import EncoderSpec


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
        return load_manifest(self.manifest_path)

    def expected_manifest(
        self, spec: EncoderSpec, channels: Mapping[str, int], dtype: str, shard_size: int
    ) -> dict[str, Any]:
        """The manifest this configuration writes."""
        return build_manifest(
            self.preprocessing, len(self.images), self.digest, spec, channels, dtype, shard_size
        )

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
        differences = manifest_differences(manifest, expected, sections)
        if differences:
            raise StaleCacheError(stale_message(self.folder, self.key, differences))
        key = manifest_key(manifest)
        storage = manifest["storage"]
        shards: list[ShardIndex] = []
        missing: list[int] = []
        for shard in range(int(storage["shards"])):
            state, problem, path, index = shard_state(
                self.folder, self.images, manifest, key, shard, verify=verify
            )
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

    def missing_shards(self) -> list[int]:
        """Shards that are not done (sizes checked, not checksums); all of them without a manifest."""
        manifest = self.read_manifest()
        if manifest is None:
            return []
        key = manifest_key(manifest)
        return [
            shard
            for shard in range(int(manifest["storage"]["shards"]))
            if shard_state(self.folder, self.images, manifest, key, shard, verify=False)[0] != "done"
        ]

    # -- writing ---------------------------------------------------------------------------------

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
        create_or_check_manifest(self.folder, expected, self.key)
        results = fill_shards(
            self.folder,
            self.images,
            self.preprocessing,
            self.key,
            expected,
            encoder,
            rank=rank,
            world_size=world_size,
            batch_size=batch_size,
            device=device,
            num_workers=num_workers,
            on_bad_image=on_bad_image,
            progress=progress,
        )
        shards = int(expected["storage"]["shards"])
        report = FillReport(self.folder, rank, world_size, len(self.images), shards, results)
        report.seconds = time.perf_counter() - started
        report.complete = not self.missing_shards()
        return report


def _short_list(values: Sequence[int], limit: int = 8) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f", ... (+{len(values) - limit})" if len(values) > limit else "")
