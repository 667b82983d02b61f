"""Reading a complete cache: memory-mapped shards, one image's features checked against its crc32."""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from findlit.data.feature_cache.errors import (
    CorruptShardError,
    FeatureCacheError,
    StaleCacheError,
    stale_message,
)
from findlit.data.feature_cache.manifest import DTYPES, LevelLayout, Preprocessing, manifest_differences
from findlit.data.feature_cache.shards import ShardIndex, shard_paths
from findlit.encoders.spec import EncoderSpec
from findlit.errors import DataError


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
        self.levels = LevelLayout.from_dict(self.manifest["levels"])
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
        differences = manifest_differences(self.manifest, {"encoder": spec.to_dict()}, ["encoder"])
        if differences:
            raise StaleCacheError(stale_message(self.folder, key, differences))

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
        data_path = shard_paths(self.folder, shard)[0]
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
            path = shard_paths(self.folder, shard)[0]
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
