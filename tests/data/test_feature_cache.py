"""FeatureCache: cached == fresh, stale configurations, corrupt shards, resumption and ranks."""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from findlit.data.config import DatasetConfig, DatasetPaths, read_records
from findlit.data.decode import read_image
from findlit.data.feature_cache import (
    CorruptShardError,
    FeatureCache,
    FeatureReader,
    IncompleteCacheError,
    Preprocessing,
    ShardResult,
    StaleCacheError,
)
from findlit.data.records import ImageInfo
from findlit.data.sample import Sample
from findlit.data.synthetic import generate
from findlit.encoders.base import STRIDES
from findlit.errors import DataError
from tests.encoders.tiny import CHANNELS, EncoderInterruptedError, TinyVision
from tests.fixtures import REPO

SHARD = 3  # 10 synthetic images -> shards of 3, 3, 3, 1


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "data"
    generate(root, train=10, val=4, size=64, seed=0)
    return root


def synth_images(root: Path, split: str = "train") -> list[ImageInfo]:
    config = DatasetConfig(
        name="cap",
        task="retrieval",
        format="coco_captions",
        paths=DatasetPaths(captions_json=f"annotations/captions_{split}.json", image_root=split),
    )
    return [record.image for record in read_records(config, "data.train[0]", root).records]


def coco_images(root: Path) -> list[ImageInfo]:
    config = DatasetConfig(
        name="pan",
        task="segmentation",
        format="coco_panoptic",
        paths=DatasetPaths(
            panoptic_json="annotations/panoptic_val2017.json",
            panoptic_root="panoptic_val2017",
            image_root="val2017",
        ),
    )
    return [record.image for record in read_records(config, "data.val[0]", root).records]


def cache(folder: Path, images: list[ImageInfo], image_size: int = 48) -> FeatureCache:
    return FeatureCache(folder, images, Preprocessing(image_size), key="data.train[0].features")


def fresh(encoder: TinyVision, info: ImageInfo, preprocessing: Preprocessing) -> dict[str, torch.Tensor]:
    """What the encoder gives for the image alone in a collated batch (resized, zero-padded)."""
    image = preprocessing.resize()(Sample(image=read_image(info)), torch.Generator())["image"]
    height, width = preprocessing.frame(image.shape[1], image.shape[2])
    padded = F.pad(image, (0, width - image.shape[2], 0, height - image.shape[1]))
    return {level: value[0] for level, value in encoder(padded[None].float() / 255).items()}


def shard_bytes(folder: Path) -> dict[str, bytes]:
    return {
        path.name: path.read_bytes() for path in sorted(folder.glob("shard-*")) if ".tmp." not in path.name
    }


# ---------------------------------------------------------------------------------------------
# cached == fresh


def test_cached_features_equal_fresh_ones_within_fp16(tmp_path: Path, coco_sample: Path) -> None:
    images = coco_images(coco_sample)
    encoder = TinyVision()
    store = FeatureCache(tmp_path / "cache", images, Preprocessing(100))
    report = store.fill(encoder, shard_size=1, batch_size=4)
    assert report.complete and len(report.computed) == 2 and not report.reused
    reader = store.open(encoder.spec)
    assert len(reader) == 2
    frames = set()
    for position, info in enumerate(images):
        cached = reader.read(position)
        assert cached.image_id == info.id
        assert cached.orig_size == (info.height, info.width)
        assert max(cached.image_size) == 100
        frames.add(cached.frame)
        expected = fresh(encoder, info, store.preprocessing)
        assert set(cached.features) == set(STRIDES)
        for level, value in cached.features.items():
            assert value.dtype == torch.float16
            assert value.shape == (
                CHANNELS[level],
                cached.frame[0] // STRIDES[level],
                cached.frame[1] // STRIDES[level],
            )
            torch.testing.assert_close(value.float(), expected[level], rtol=1e-3, atol=2e-3)
    assert len(frames) == 2, "the two COCO images should pad to different frames"


def test_float32_storage_is_exact_up_to_batching(tmp_path: Path, synth: Path) -> None:
    images = synth_images(synth)[:4]
    encoder = TinyVision()
    store = cache(tmp_path / "cache", images)
    store.fill(encoder, dtype="float32", batch_size=3)
    reader = store.open()
    assert reader.manifest["storage"]["dtype"] == "float32"
    for position, info in enumerate(images):
        cached = reader.read(position)
        expected = fresh(encoder, info, store.preprocessing)
        for level, value in cached.features.items():
            assert value.dtype == torch.float32
            torch.testing.assert_close(value, expected[level], rtol=1e-4, atol=1e-4)


def test_reads_are_memory_mapped_and_lazy(tmp_path: Path, synth: Path) -> None:
    store = cache(tmp_path / "cache", synth_images(synth))
    store.fill(TinyVision(), shard_size=SHARD)
    reader = store.open()
    assert reader._maps == {}
    reader.read(4)  # shard 1
    assert list(reader._maps) == [1]
    assert isinstance(reader._maps[1], np.memmap)
    # A pickled reader (DataLoader workers) carries the index, not the mapped bytes.
    payload = pickle.dumps(reader)
    assert len(payload) < 20_000
    clone = pickle.loads(payload)
    assert isinstance(clone, FeatureReader) and clone._maps == {}
    assert torch.equal(clone.read(4).features["res2"], reader.read(4).features["res2"])


def test_manifest_records_encoder_preprocessing_dataset_and_storage(tmp_path: Path, synth: Path) -> None:
    store = cache(tmp_path / "cache", synth_images(synth))
    encoder = TinyVision()
    store.fill(encoder, shard_size=SHARD)
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert manifest["encoder"] == encoder.spec.to_dict()
    assert manifest["preprocessing"]["image_size"] == 48
    assert manifest["preprocessing"]["size_divisibility"] == 32
    assert manifest["dataset"] == {"images": 10, "digest": store.digest}
    assert manifest["storage"] == {"dtype": "float16", "shard_size": SHARD, "shards": 4}
    assert manifest["levels"]["res5"] == {"stride": 32, "channels": CHANNELS["res5"]}
    sidecar = json.loads((tmp_path / "cache" / "shard-00003.json").read_text())
    assert sidecar["start"] == 9 and sidecar["count"] == 1 and len(sidecar["sha256"]) == 64
    assert sidecar["nbytes"] == (tmp_path / "cache" / "shard-00003.bin").stat().st_size


# ---------------------------------------------------------------------------------------------
# never silently stale


def test_changed_preprocessing_is_a_stale_cache_error(tmp_path: Path, synth: Path) -> None:
    images = synth_images(synth)
    cache(tmp_path / "cache", images, image_size=48).fill(TinyVision(), shard_size=SHARD)
    changed = cache(tmp_path / "cache", images, image_size=64)
    with pytest.raises(StaleCacheError) as opened:
        changed.open()
    message = str(opened.value)
    assert "preprocessing.image_size: 48 != 64" in message
    assert str(tmp_path / "cache") in message and "data.train[0].features" in message
    assert "findlit cache" in message
    before = shard_bytes(tmp_path / "cache")
    with pytest.raises(StaleCacheError, match=r"preprocessing.image_size"):
        changed.fill(TinyVision(), shard_size=SHARD)
    assert shard_bytes(tmp_path / "cache") == before, "a stale cache must never be overwritten"


def test_changed_padding_multiple_is_stale(tmp_path: Path, synth: Path) -> None:
    images = synth_images(synth)
    cache(tmp_path / "cache", images).fill(TinyVision())
    other = FeatureCache(tmp_path / "cache", images, Preprocessing(48, size_divisibility=64))
    with pytest.raises(StaleCacheError, match=r"preprocessing.size_divisibility: 32 != 64"):
        other.open()


def test_changed_encoder_is_a_stale_cache_error(tmp_path: Path, synth: Path) -> None:
    store = cache(tmp_path / "cache", synth_images(synth))
    store.fill(TinyVision(seed=0), shard_size=SHARD)
    other = TinyVision(seed=1)
    with pytest.raises(StaleCacheError, match=r"encoder.weights_digest"):
        store.fill(other)
    with pytest.raises(StaleCacheError, match=r"encoder.weights_digest"):
        store.open(other.spec)
    reader = store.open()  # without a spec: preprocessing and dataset only
    with pytest.raises(StaleCacheError, match=r"encoder.weights_digest") as checked:
        reader.check_encoder(other.spec, "data.val[1].features")
    assert "data.val[1].features" in str(checked.value)
    reader.check_encoder(TinyVision(seed=0).spec)


def test_changed_dataset_is_a_stale_cache_error(tmp_path: Path, synth: Path) -> None:
    images = synth_images(synth)
    cache(tmp_path / "cache", images).fill(TinyVision(), shard_size=SHARD)
    with pytest.raises(StaleCacheError, match=r"dataset.images: 10 != 9") as subset:
        cache(tmp_path / "cache", images[:9]).open()
    assert "dataset.digest" in str(subset.value)
    reordered = [images[1], images[0], *images[2:]]
    with pytest.raises(StaleCacheError, match=r"dataset.digest"):
        cache(tmp_path / "cache", reordered).open()
    # A re-encoded image file (same name, other bytes) changes the digest too.
    with open(images[3].path, "ab") as handle:
        handle.write(b"\0")
    try:
        with pytest.raises(StaleCacheError, match=r"dataset.digest"):
            cache(tmp_path / "cache", images).open()
    finally:
        with open(images[3].path, "r+b") as handle:
            handle.truncate(images[3].path.stat().st_size - 1)


def test_changed_storage_on_refill_is_stale(tmp_path: Path, synth: Path) -> None:
    store = cache(tmp_path / "cache", synth_images(synth))
    store.fill(TinyVision(), shard_size=SHARD)
    with pytest.raises(StaleCacheError, match=r"storage.shard_size: 3 != 4"):
        store.fill(TinyVision(), shard_size=4)
    with pytest.raises(StaleCacheError, match=r"storage.dtype"):
        store.fill(TinyVision(), dtype="float32")
    # Without explicit storage options, a refill takes them from the manifest.
    assert len(store.fill(TinyVision()).reused) == 4


def test_missing_and_incomplete_caches_are_named(tmp_path: Path, synth: Path) -> None:
    store = cache(tmp_path / "cache", synth_images(synth))
    with pytest.raises(IncompleteCacheError, match=r"no feature cache .*findlit cache"):
        store.open()
    store.fill(TinyVision(), shard_size=SHARD, rank=0, world_size=2)
    with pytest.raises(IncompleteCacheError, match=r"2 of 4 shards missing \(1, 3\)"):
        store.open()


# ---------------------------------------------------------------------------------------------
# corrupt and truncated shards


def test_corrupted_shard_is_named(tmp_path: Path, synth: Path) -> None:
    store = cache(tmp_path / "cache", synth_images(synth))
    store.fill(TinyVision(), shard_size=SHARD)
    path = tmp_path / "cache" / "shard-00001.bin"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    reader = store.open()  # sizes match: the damage is found when the record is read
    reader.read(0)
    with pytest.raises(CorruptShardError, match=r"shard-00001.bin") as read:
        for position in range(3, 6):
            reader.read(position)
    assert "checksum" in str(read.value) and "findlit cache" in str(read.value)
    with pytest.raises(CorruptShardError, match=r"shard-00001.bin.*sha256"):
        store.open(verify=True)
    # A refill recomputes exactly that shard, and says why.
    encoder = TinyVision()
    report = store.fill(encoder)
    assert [r.shard for r in report.computed] == [1]
    assert "shard-00001.bin" in (report.computed[0].note or "")
    assert encoder.images == 3
    store.open(verify=True).read(4)


def test_truncated_shard_is_named(tmp_path: Path, synth: Path) -> None:
    store = cache(tmp_path / "cache", synth_images(synth))
    store.fill(TinyVision(), shard_size=SHARD)
    path = tmp_path / "cache" / "shard-00002.bin"
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size - 10)
    with pytest.raises(CorruptShardError, match=r"shard-00002.bin: truncated") as opened:
        store.open()
    assert opened.value.path == path


def test_unreadable_sidecar_is_named(tmp_path: Path, synth: Path) -> None:
    store = cache(tmp_path / "cache", synth_images(synth))
    store.fill(TinyVision(), shard_size=SHARD)
    sidecar = tmp_path / "cache" / "shard-00000.json"
    sidecar.write_text(sidecar.read_text()[:50])
    with pytest.raises(CorruptShardError, match=r"shard-00000.json.*unreadable sidecar"):
        store.open()


# ---------------------------------------------------------------------------------------------
# interruption and resumption


def test_interrupted_fill_resumes_without_recomputing_finished_shards(tmp_path: Path, synth: Path) -> None:
    images = synth_images(synth)
    store = cache(tmp_path / "cache", images)
    # batch_size 3 == shard size and one frame size: one encoder call per shard; fail in shard 2.
    with pytest.raises(EncoderInterruptedError):
        store.fill(TinyVision(fail_on_call=3), shard_size=SHARD, batch_size=3)
    assert store.missing_shards() == [2, 3]
    assert not list((tmp_path / "cache").glob("*.tmp.*")), "an exception cleans its temporary file"
    encoder = TinyVision()
    report = store.fill(encoder, batch_size=3)
    assert [r.shard for r in report.reused] == [0, 1]
    assert [r.shard for r in report.computed] == [2, 3]
    assert encoder.images == 4 and encoder.calls == 2
    assert report.complete
    reference = cache(tmp_path / "reference", images)
    reference.fill(TinyVision(), shard_size=SHARD, batch_size=3)
    assert shard_bytes(tmp_path / "cache") == shard_bytes(tmp_path / "reference")


def test_interruption_between_shards_via_progress_hook(tmp_path: Path, synth: Path) -> None:
    store = cache(tmp_path / "cache", synth_images(synth))
    seen: list[ShardResult] = []

    def stop_after_two(result: ShardResult) -> None:
        seen.append(result)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.fill(TinyVision(), shard_size=SHARD, progress=stop_after_two)
    assert store.missing_shards() == [2, 3]
    encoder = TinyVision()
    report = store.fill(encoder, progress=seen.append)
    assert len(report.reused) == 2 and len(report.computed) == 2 and encoder.images == 4
    assert [r.status for r in seen[2:]] == ["reused", "reused", "computed", "computed"]


KILLED_WRITER = """
import sys
from pathlib import Path
from tests.data.test_feature_cache import cache, synth_images
from tests.encoders.tiny import TinyVision
root, folder = Path(sys.argv[1]), Path(sys.argv[2])
cache(folder, synth_images(root)).fill(TinyVision(kill_on_call=3), shard_size=3, batch_size=1)
"""


@pytest.mark.slow
def test_killed_writer_leaves_no_shard_that_passes(tmp_path: Path, synth: Path) -> None:
    folder = tmp_path / "cache"
    process = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, str(synth), str(folder)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert process.returncode == -9, process.stderr
    # Killed on the third image of shard 0: its partly written temporary file is all there is.
    leftovers = [p.name for p in folder.glob("shard-*")]
    assert len(leftovers) == 1 and leftovers[0].startswith("shard-00000.bin.tmp."), leftovers
    store = cache(folder, synth_images(synth))
    assert store.missing_shards() == [0, 1, 2, 3]
    with pytest.raises(IncompleteCacheError):
        store.open()
    report = store.fill(TinyVision())
    assert report.complete and len(report.computed) == 4
    assert not list(folder.glob("*.tmp.*")), "the dead writer's temporary file is removed"


def test_leftover_temporaries_are_ignored(tmp_path: Path, synth: Path) -> None:
    images = synth_images(synth)
    store = cache(tmp_path / "cache", images)
    store.fill(TinyVision(), shard_size=SHARD)
    folder = tmp_path / "cache"
    # A half-written copy of a real shard from another host, and a dead writer's on this host.
    foreign = folder / "shard-00001.bin.tmp.other-host.example.12345"
    foreign.write_bytes((folder / "shard-00001.bin").read_bytes()[:100])
    (folder / "shard-00002.json").unlink()
    dead = folder / f"shard-00002.bin.tmp.{socket.gethostname()}.{_dead_pid()}"
    dead.write_bytes(b"partial")
    with pytest.raises(IncompleteCacheError, match=r"1 of 4 shards missing \(2\)"):
        store.open()
    report = store.fill(TinyVision())
    assert [r.shard for r in report.computed] == [2] and len(report.reused) == 3
    assert foreign.exists(), "another host's temporary file is left alone"
    assert not dead.exists()
    assert len(store.open(verify=True)) == 10


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_deleted_manifest_is_recreated_and_shards_reused(tmp_path: Path, synth: Path) -> None:
    store = cache(tmp_path / "cache", synth_images(synth))
    store.fill(TinyVision(), shard_size=SHARD)
    (tmp_path / "cache" / "manifest.json").unlink()
    assert len(store.fill(TinyVision(), shard_size=SHARD).reused) == 4


def test_shards_of_another_configuration_are_recomputed_not_reused(tmp_path: Path, synth: Path) -> None:
    images = synth_images(synth)
    cache(tmp_path / "cache", images, image_size=48).fill(TinyVision(), shard_size=SHARD)
    (tmp_path / "cache" / "manifest.json").unlink()  # a user "resets" the folder by hand
    store = cache(tmp_path / "cache", images, image_size=40)
    with pytest.raises(IncompleteCacheError, match="no manifest"):
        store.open()

    def stop(result: ShardResult) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.fill(TinyVision(), shard_size=SHARD, progress=stop)
    # Shard 0 is recomputed; shard 1 still holds the old configuration's features and is refused.
    with pytest.raises(StaleCacheError, match=r"shard-00001\.json belongs to another configuration"):
        store.open()
    report = store.fill(TinyVision(), shard_size=SHARD)
    assert [r.shard for r in report.reused] == [0]
    assert len(report.computed) == 3 and all("manifest key" in (r.note or "") for r in report.computed)
    assert max(store.open().read(0).image_size) == 40


# ---------------------------------------------------------------------------------------------
# bad images


def test_bad_image_policy(tmp_path: Path, synth: Path) -> None:
    root = tmp_path / "data"
    generate(root, train=4, val=1, size=64, seed=0)
    images = synth_images(root)
    images[1].path.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=images[1].path.name):
        cache(tmp_path / "strict", images).fill(TinyVision())
    store = cache(tmp_path / "lenient", images)
    report = store.fill(TinyVision(), on_bad_image="skip")
    assert report.computed[0].bad_images == 1 and report.computed[0].images == 3
    reader = store.open()
    reader.read(2)
    with pytest.raises(DataError, match=f"image_id={images[1].id}"):
        reader.read(1)


# ---------------------------------------------------------------------------------------------
# ranks


def test_two_ranks_fill_disjoint_shards_equal_to_one_rank(tmp_path: Path, synth: Path) -> None:
    images = synth_images(synth)
    shared = cache(tmp_path / "shared", images)
    first = shared.fill(TinyVision(), rank=0, world_size=2, shard_size=SHARD)
    assert [r.shard for r in first.computed] == [0, 2] and not first.complete
    second = shared.fill(TinyVision(), rank=1, world_size=2, shard_size=SHARD)
    assert [r.shard for r in second.computed] == [1, 3] and second.complete
    single = cache(tmp_path / "single", images)
    single.fill(TinyVision(), shard_size=SHARD)
    assert shard_bytes(tmp_path / "shared") == shard_bytes(tmp_path / "single")
    assert (tmp_path / "shared" / "manifest.json").read_bytes() == (
        tmp_path / "single" / "manifest.json"
    ).read_bytes()


RANK_WRITER = """
import sys
from pathlib import Path
from tests.data.test_feature_cache import cache, synth_images
from tests.encoders.tiny import TinyVision
root, folder, rank = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
report = cache(folder, synth_images(root)).fill(TinyVision(), rank=rank, world_size=2, shard_size=1)
print(len(report.computed))
"""


@pytest.mark.slow
def test_two_concurrent_processes_fill_one_cache(tmp_path: Path, synth: Path) -> None:
    folder = tmp_path / "cache"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", RANK_WRITER, str(synth), str(folder), str(rank)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [process.communicate(timeout=300) for process in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    assert [out.strip() for out, _ in outputs] == ["5", "5"]
    store = cache(folder, synth_images(synth))
    assert len(store.open(verify=True)) == 10
    assert not [p for p in os.listdir(folder) if ".tmp." in p]
    single = cache(tmp_path / "single", synth_images(synth))
    single.fill(TinyVision(), shard_size=1)
    assert shard_bytes(folder) == shard_bytes(tmp_path / "single")
