"""Feature cache of the default vision encoder: bytes per image, fill speed, read speed vs computing.

    .venv/bin/python scripts/bench/feature_cache_size.py [--data data/demo] [--images 256]

Caches the first ``--images`` training images of the demo data (generated into a temporary folder
when ``--data`` is missing) at ``--image-size`` with ``build_encoder("timm")`` (tf_efficientnet_lite0),
then reads every record back in random order through the memory-mapped reader (crc32 checked).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812

from findlit.data.config import DatasetConfig, DatasetPaths, read_records
from findlit.data.decode import read_image
from findlit.data.feature_cache import FeatureCache, Preprocessing
from findlit.data.sample import Sample
from findlit.data.synthetic import generate
from findlit.encoders import build_encoder
from findlit.encoders.base import STRIDES, VisionEncoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("data/demo"))
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        root = args.data
        if not (root / "annotations" / "panoptic_train.json").is_file():
            root = Path(scratch) / "demo"
            generate(root, train=args.images, val=1, size=args.image_size, seed=0)
        config = DatasetConfig(
            name="demo_panoptic",
            task="segmentation",
            format="coco_panoptic",
            paths=DatasetPaths(
                panoptic_json="annotations/panoptic_train.json",
                panoptic_root="panoptic_train",
                image_root="train",
            ),
        )
        images = [record.image for record in read_records(config, "bench", root).records[: args.images]]
        encoder = build_encoder("timm")
        assert isinstance(encoder, VisionEncoder)
        preprocessing = Preprocessing(args.image_size)
        store = FeatureCache(Path(scratch) / "cache", images, preprocessing)

        fill = store.fill(
            encoder, batch_size=args.batch_size, shard_size=args.shard_size, num_workers=args.workers
        )
        cache_bytes = sum(p.stat().st_size for p in store.folder.glob("shard-*.bin"))
        index_bytes = sum(p.stat().st_size for p in store.folder.glob("shard-*.json"))

        # Encoder alone on preprocessed, padded images (no decoding), batch as in the fill.
        resize = preprocessing.resize()
        pixels = []
        for info in images[:128]:
            image = resize(Sample(image=read_image(info)), torch.Generator())["image"]
            height, width = preprocessing.frame(image.shape[1], image.shape[2])
            pixels.append(F.pad(image, (0, width - image.shape[2], 0, height - image.shape[1])))
        batches = [
            torch.stack(pixels[i : i + args.batch_size]) for i in range(0, len(pixels), args.batch_size)
        ]
        encoder(batches[0].float() / 255)  # warm-up
        started = time.perf_counter()
        for batch in batches:
            encoder(batch.float() / 255)
        encode_rate = len(pixels) / (time.perf_counter() - started)

        reader = store.open(encoder.spec)
        order = list(range(len(reader)))
        random.Random(0).shuffle(order)
        started = time.perf_counter()
        for position in order:
            reader.read(position)
        read_seconds = time.perf_counter() - started
        sample = reader.read(0)

    print(
        json.dumps(
            {
                "encoder": encoder.spec.name,
                "images": len(images),
                "image_size": args.image_size,
                "frame": list(sample.frame),
                "dtype": "float16",
                "bytes_per_image": cache_bytes // len(images),
                "bytes_per_image_by_level": {
                    level: int(value.numel() * value.element_size())
                    for level, value in sample.features.items()
                },
                "channels": {level: int(sample.features[level].shape[0]) for level in STRIDES},
                "index_bytes_per_image": index_bytes // len(images),
                "fill_images_per_s": round(len(images) / fill.seconds, 1),
                "encode_only_images_per_s": round(encode_rate, 1),
                "read_images_per_s": round(len(images) / read_seconds, 1),
                "read_mb_per_s": round(cache_bytes / read_seconds / 1e6, 1),
                "read_speedup_vs_encode": round(len(images) / read_seconds / encode_rate, 1),
                "torch_threads": torch.get_num_threads(),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
