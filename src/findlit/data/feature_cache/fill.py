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
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from findlit.data.decode import read_image
from findlit.data.errors import BadRecordPolicy
from findlit.data.feature_cache.atomic import remove_dead_temporaries
from findlit.data.feature_cache.errors import FeatureCacheError
from findlit.data.feature_cache.manifest import (
    DEFAULT_SHARD_SIZE,
    DTYPES,
    CacheDtype,
    LevelLayout,
    create_or_check_manifest,
    manifest_key,
)
from findlit.data.feature_cache.shards import ShardWriter, shard_name, shard_state
from findlit.data.records import ImageInfo
from findlit.data.sample import Sample
from findlit.data.transforms import Resize
from findlit.encoders.base import STRIDES, VisionEncoder
from findlit.errors import DataError

if TYPE_CHECKING:
    from findlit.data.feature_cache.cache import FeatureCache


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


def fill_cache(
    cache: FeatureCache,
    encoder: VisionEncoder,
    *,
    rank: int,
    world_size: int,
    batch_size: int,
    shard_size: int | None,
    dtype: CacheDtype | None,
    device: str | torch.device | None,
    num_workers: int,
    on_bad_image: BadRecordPolicy,
    progress: Callable[[ShardResult], None] | None,
) -> FillReport:
    """Compute this rank's shards of ``cache`` that are not done yet (see :meth:`FeatureCache.fill`)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    started = time.perf_counter()
    existing = cache.read_manifest()
    storage = existing.get("storage", {}) if existing is not None else {}
    expected = cache.expected_manifest(
        encoder.spec,
        encoder.channels,
        dtype or storage.get("dtype", "float16"),
        shard_size or int(storage.get("shard_size", DEFAULT_SHARD_SIZE)),
    )
    create_or_check_manifest(cache.folder, expected, cache.key)
    key = manifest_key(expected)
    shards = int(expected["storage"]["shards"])
    report = FillReport(cache.folder, rank, world_size, len(cache.images), shards)
    todo: list[int] = []
    notes: dict[int, str] = {}
    for shard in range(rank, shards, world_size):
        state, problem, path, index = shard_state(
            cache.folder, cache.images, expected, key, shard, verify=True
        )
        if state == "done":
            assert index is not None
            result = ShardResult(shard, "reused", len(index) - len(index.errors), len(index.errors), 0, 0.0)
            report.results.append(result)
            if progress is not None:
                progress(result)
        else:
            todo.append(shard)
            if state != "missing":
                notes[shard] = f"recomputed {path.name}: {problem}"
            remove_dead_temporaries(cache.folder, shard_name(shard))
    if todo:
        _compute_shards(
            cache,
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
    report.complete = not cache.missing_shards()
    return report


def _compute_shards(
    cache: FeatureCache,
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
    levels = LevelLayout.from_dict(manifest["levels"])
    if device is not None:
        encoder.to(device)
    target = encoder.device
    ranges = {s: (s * shard_size, min((s + 1) * shard_size, len(cache.images))) for s in todo}
    positions = [p for s in todo for p in range(*ranges[s])]
    loader = DataLoader(
        PreprocessedImages(cache.images, positions, cache.preprocessing.resize(), cache.key),
        batch_size=None,
        num_workers=num_workers,
        collate_fn=_as_is,
    )
    writer: ShardWriter | None = None
    buckets: dict[tuple[int, int], list[tuple[int, Tensor, tuple[int, int]]]] = {}

    def flush(frame: tuple[int, int]) -> None:
        items = buckets.pop(frame, [])
        if not items:
            return
        assert writer is not None
        for (position, image, orig_size), record in zip(
            items,
            encode_records(encoder, [image for _, image, _ in items], frame, levels, target, dtype),
            strict=True,
        ):
            size = (int(image.shape[1]), int(image.shape[2]))
            writer.add(position, cache.images[position].id, size, orig_size, record)

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
                writer = ShardWriter(cache.folder, shard, start, end - start, key, dtype)
            if error is not None:
                if on_bad_image == "error":
                    raise DataError(error, None, key=cache.key)
                writer.add_error(position, cache.images[position].id, error)
                continue
            assert image is not None
            frame = cache.preprocessing.frame(int(image.shape[1]), int(image.shape[2]))
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
