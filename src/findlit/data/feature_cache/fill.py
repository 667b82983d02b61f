"""Filling a cache: which shards this rank owns, which are done, and encoding the others.

Rank ``r`` of ``W`` owns shards ``r, r + W, ...`` (disjoint, so ranks never write the same file).
A shard that is done and valid (checked against this manifest, with its sha256) is reused; any
other is recomputed: its images are decoded and resized (in DataLoader workers when asked),
batched by padded size, encoded, and written shard after shard, each committed as soon as it is
full. An interrupted fill therefore resumes where it stopped.
"""

from __future__ import annotations

import time
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

from findlit.atomic_files import remove_dead_leftovers
from findlit.data.decode import read_image
from findlit.data.errors import BadRecordPolicy
from findlit.data.feature_cache.errors import FeatureCacheError
from findlit.data.feature_cache.manifest import DTYPES, LevelLayout, Preprocessing, manifest_key
from findlit.data.feature_cache.shards import ShardWriter, shard_paths, shard_state
from findlit.data.records import ImageInfo
from findlit.data.sample import Sample
from findlit.data.transforms import Resize
from findlit.encoders.base import STRIDES, VisionEncoder
from findlit.errors import DataError


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


def fill_shards(
    folder: Path,
    images: Sequence[ImageInfo],
    preprocessing: Preprocessing,
    key: str | None,
    manifest: Mapping[str, Any],
    encoder: VisionEncoder,
    *,
    rank: int,
    world_size: int,
    batch_size: int,
    device: str | torch.device | None,
    num_workers: int,
    on_bad_image: BadRecordPolicy,
    progress: Callable[[ShardResult], None] | None,
) -> list[ShardResult]:
    """Reuse or compute this rank's shards of a cache whose manifest is on disk.

    Args:
        folder: the cache folder.
        images: the dataset's images in record order.
        preprocessing: the cache's fixed preprocessing.
        key: the config key naming the folder, for messages.
        manifest: the cache's manifest (already written).
        encoder: the frozen vision encoder.
        rank: this process's rank; it owns shards ``rank, rank + world_size, ...``.
        world_size: number of processes filling the cache together.
        batch_size: most images per encoder call.
        device: where to run the encoder (None: where it is).
        num_workers: DataLoader workers decoding the images.
        on_bad_image: ``error`` or ``skip`` an image that fails to decode.
        progress: called after each shard of this rank (reused or computed).

    Returns:
        One result per shard of this rank, in shard order.

    """
    manifest_id = manifest_key(manifest)
    shards = int(manifest["storage"]["shards"])
    results: list[ShardResult] = []
    todo: list[int] = []
    notes: dict[int, str] = {}
    for shard in range(rank, shards, world_size):
        state, problem, path, index = shard_state(folder, images, manifest, manifest_id, shard, verify=True)
        if state == "done":
            assert index is not None
            result = ShardResult(shard, "reused", len(index) - len(index.errors), len(index.errors), 0, 0.0)
            results.append(result)
            if progress is not None:
                progress(result)
        else:
            todo.append(shard)
            if state != "missing":
                notes[shard] = f"recomputed {path.name}: {problem}"
            for file in shard_paths(folder, shard):
                remove_dead_leftovers(folder, file.name)
    if todo:
        computation = ShardComputation(
            folder, images, preprocessing, key, manifest, encoder, batch_size, on_bad_image, notes, progress
        )
        results += computation.run(todo, device=device, num_workers=num_workers)
    return sorted(results, key=lambda r: r.shard)


_Item = tuple[int, Tensor, tuple[int, int]]
"""(dataset position, resized image uint8[3,h,w], size on disk (H0, W0)) of one decoded image."""


class ShardComputation:
    """Encodes shards one after the other, committing each as soon as its last image is encoded.

    Images come in dataset order; those of one padded frame size wait in a bucket until
    ``batch_size`` of them can be encoded together, and the buckets are emptied when a shard ends
    (so no image is encoded with another shard's). State: the open shard's :class:`ShardWriter`
    (None between shards), the buckets, and the results of the shards committed so far.

    Args:
        folder, images, preprocessing, key, manifest: the cache (see :func:`fill_shards`).
        encoder: the frozen vision encoder.
        batch_size: most images per encoder call.
        on_bad_image: ``error`` raises at an image that fails to decode, ``skip`` records it as bad.
        notes: why an existing shard is recomputed, by shard.
        progress: called after each committed shard.

    """

    def __init__(
        self,
        folder: Path,
        images: Sequence[ImageInfo],
        preprocessing: Preprocessing,
        key: str | None,
        manifest: Mapping[str, Any],
        encoder: VisionEncoder,
        batch_size: int,
        on_bad_image: BadRecordPolicy,
        notes: Mapping[int, str],
        progress: Callable[[ShardResult], None] | None,
    ):
        storage = manifest["storage"]
        self.folder, self.images, self.preprocessing, self.key = folder, images, preprocessing, key
        self.manifest_id = manifest_key(manifest)
        self.shard_size, self.dtype = int(storage["shard_size"]), DTYPES[storage["dtype"]]
        self.levels = LevelLayout.from_dict(manifest["levels"])
        self.encoder, self.batch_size, self.on_bad_image = encoder, batch_size, on_bad_image
        self.notes, self.progress = notes, progress
        self.writer: ShardWriter | None = None
        self.buckets: dict[tuple[int, int], list[_Item]] = {}
        self.results: list[ShardResult] = []

    def records(self, shard: int) -> range:
        """Dataset positions of ``shard``'s records."""
        return range(shard * self.shard_size, min((shard + 1) * self.shard_size, len(self.images)))

    def run(
        self, shards: Sequence[int], *, device: str | torch.device | None, num_workers: int
    ) -> list[ShardResult]:
        """Compute ``shards`` (increasing) and return their results; an exception drops the open shard."""
        if device is not None:
            self.encoder.to(device)
        positions = [position for shard in shards for position in self.records(shard)]
        loader = DataLoader(
            PreprocessedImages(self.images, positions, self.preprocessing.resize(), self.key),
            batch_size=None,
            num_workers=num_workers,
            collate_fn=_as_is,
        )
        try:
            for position, image, orig_size, error in loader:
                self.start_shard_of(position)
                if error is not None:
                    self.skip_bad_image(position, error)
                else:
                    assert image is not None
                    self.add(position, image, orig_size)
            if self.writer is not None:
                self.finish_shard()
        except BaseException:
            if self.writer is not None:
                self.writer.abort()
                self.writer = None
            raise
        return self.results

    def start_shard_of(self, position: int) -> None:
        """Make sure the open shard is the one holding ``position``, committing the previous one."""
        shard = position // self.shard_size
        if self.writer is not None and self.writer.shard == shard:
            return
        if self.writer is not None:
            self.finish_shard()
        records = self.records(shard)
        self.writer = ShardWriter(
            self.folder, shard, records.start, len(records), self.manifest_id, self.dtype
        )

    def skip_bad_image(self, position: int, error: str) -> None:
        """Record an image that failed to decode, or raise, as ``on_bad_image`` says."""
        if self.on_bad_image == "error":
            raise DataError(error, None, key=self.key)
        assert self.writer is not None
        self.writer.add_error(position, self.images[position].id, error)

    def add(self, position: int, image: Tensor, orig_size: tuple[int, int]) -> None:
        """Put a resized image uint8[3,h,w] in the bucket of its frame; encode the bucket when full."""
        frame = self.preprocessing.frame(int(image.shape[1]), int(image.shape[2]))
        bucket = self.buckets.setdefault(frame, [])
        bucket.append((position, image, orig_size))
        if len(bucket) >= self.batch_size:
            self.encode_bucket(frame)

    def encode_bucket(self, frame: tuple[int, int]) -> None:
        """Encode the images waiting for ``frame`` in one call and append their records to the shard."""
        items = self.buckets.pop(frame, [])
        if not items:
            return
        assert self.writer is not None
        images = [image for _, image, _ in items]
        records = encode_records(self.encoder, images, frame, self.levels, self.encoder.device, self.dtype)
        for (position, image, orig_size), record in zip(items, records, strict=True):
            size = (int(image.shape[1]), int(image.shape[2]))
            self.writer.add(position, self.images[position].id, size, orig_size, record)

    def finish_shard(self) -> None:
        """Encode what waits in the buckets, commit the open shard and report it."""
        writer = self.writer
        assert writer is not None
        for frame in list(self.buckets):
            self.encode_bucket(frame)
        index = writer.commit()
        self.writer = None
        result = ShardResult(
            writer.shard,
            "computed",
            len(index) - len(index.errors),
            len(index.errors),
            index.nbytes,
            time.perf_counter() - writer.started,
            self.notes.get(writer.shard),
        )
        self.results.append(result)
        if self.progress is not None:
            self.progress(result)


class PreprocessedImages(TorchDataset[tuple[int, Tensor | None, tuple[int, int], str | None]]):
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


def encode_records(
    encoder: VisionEncoder,
    images: Sequence[Tensor],
    frame: tuple[int, int],
    levels: LevelLayout,
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
