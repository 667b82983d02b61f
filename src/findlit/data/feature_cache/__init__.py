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

Crash and concurrency safety: a shard is written by findlit's atomic writer
(:mod:`findlit.atomic_files`: temporary name, fsync, rename), and only then is its sidecar written
(the same way); a fill deletes the temporary files that killed writers on this host left behind.
A shard is done only when its sidecar exists, belongs to this manifest, and the .bin has the
recorded size (and sha256, when verified), so a writer killed at any moment leaves nothing that
passes. Rank r of W writes
shards r, r + W, ... (disjoint); the first writer creates the manifest with an exclusive hard link
and every other compares its own with it. Completeness is derived from the sidecars, never stored.

A cache never silently serves features of another configuration: a manifest that differs from the
configured one (encoder spec, preprocessing, dataset digest, storage) is a :class:`StaleCacheError`
listing the differences, and nothing is overwritten.

The modules:

- :mod:`~findlit.data.feature_cache.cache`: :class:`FeatureCache`, one dataset's cache folder.
- :mod:`~findlit.data.feature_cache.manifest`: :class:`Preprocessing`, :func:`dataset_digest`,
  creating the manifest and comparing it with the configuration.
- :mod:`~findlit.data.feature_cache.shards`: the shard files, their sidecars, whether a shard is done.
- :mod:`~findlit.data.feature_cache.reader`: :class:`FeatureReader`, memory-mapped reads.
- :mod:`~findlit.data.feature_cache.fill`: the shards of one rank: reuse, resumption, encoding
  (given the folder, images and manifest; it does not know :class:`FeatureCache`).
- :mod:`~findlit.data.feature_cache.errors`: the exceptions.
"""

from findlit.data.feature_cache.cache import FeatureCache
from findlit.data.feature_cache.errors import (
    CorruptShardError,
    FeatureCacheError,
    IncompleteCacheError,
    StaleCacheError,
)
from findlit.data.feature_cache.fill import FillReport, ShardResult
from findlit.data.feature_cache.manifest import Preprocessing, dataset_digest
from findlit.data.feature_cache.reader import CachedFeatures, FeatureReader

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
