"""Benchmark 3: one training epoch through the frozen encoder vs one reading the feature cache.

    .venv/bin/python scripts/bench/feature_cache_epoch.py [--quick] [--parts timm sam]

Both epochs run the same training loop in this process, alternating (encoder epoch, cache epoch,
encoder epoch, ...): a DataLoader over the demo's panoptic training set (the first ``--images``
images, shuffled with a fixed seed, ``num_workers=0``: the 2-core machine has no core to spare),
``FINDModule`` of configs/demo.yaml (interface hidden 128, 3 layers, 30 proposals; segmentation
losses with 4096 points), AdamW step per batch. The only difference: the encoder epoch's dataset
decodes images and the model runs the frozen vision encoder; the cache epoch's dataset
(``features:`` set) reads the memory-mapped float16 features. Both use the cache's preprocessing,
``transforms: {image_size: S, lsj: false}`` (resize + flip; large-scale jitter cannot be cached).
The cache is filled beforehand; its fill time is reported separately.

Parts:
- ``timm``: the embedded default (tf_efficientnet_lite0, pretrained weights from the demo extra) at
  256 px, ``--images`` (64) images, batch 8, goal: encoder epoch / cache epoch >= 3;
- ``sam``: SAM ViT-B (random weights) at 1024 px, ``--sam-images`` (4) images, batch 2,
  goal >= 20 (one repeat by default: one SAM epoch is minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from _common import demo_model, finish, paired_ratios, profile, spread, summary
from torch.utils.data import DataLoader

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from findlit.data.collate import collate_samples
from findlit.data.config import DatasetConfig, DatasetPaths, build_dataset, feature_cache, read_records
from findlit.data.transforms import TransformConfig
from findlit.tasks.base import Vocabulary
from findlit.training.module import FINDModule

PARTS = {
    "timm": {
        "encoder": demo_model()["vision_encoder"],
        "size": 256,
        "batch": 8,
        "goal": 3.0,
    },
    "sam": {
        "encoder": {"name": "sam", "options": {"variant": "vit_b", "image_size": 1024}},
        "size": 1024,
        "batch": 2,
        "goal": 20.0,
    },
}


def subset_config(data: Path, scratch: Path, images: int, size: int) -> DatasetConfig:
    """The demo's panoptic train set cut to its first ``images`` images (a JSON in ``scratch``)."""
    root = data.resolve()
    annotations = json.loads((root / "annotations" / "panoptic_train.json").read_text())
    kept = annotations["images"][:images]
    ids = {image["id"] for image in kept}
    annotations["images"] = kept
    annotations["annotations"] = [a for a in annotations["annotations"] if a["image_id"] in ids]
    path = scratch / f"panoptic_train_{images}.json"
    path.write_text(json.dumps(annotations))
    return DatasetConfig(
        name="demo_panoptic",
        task="segmentation",
        format="coco_panoptic",
        batch_size=8,
        paths=DatasetPaths(
            panoptic_json=str(path),
            panoptic_root=str(root / "panoptic_train"),
            image_root=str(root / "train"),
        ),
        transforms=TransformConfig(image_size=size, lsj=False),
    )


def run_part(
    name: str, images: int, repeats: int, data: Path, scratch: Path, do_profile: bool
) -> dict[str, Any]:
    part = PARTS[name]
    config = subset_config(data, scratch, images, int(part["size"]))
    cached_config = DatasetConfig(**{**config.__dict__, "features": str(scratch / f"cache-{name}")})
    torch.manual_seed(0)
    demo = demo_model()
    module = FINDModule(
        vision_encoder=part["encoder"],
        text_encoder=demo["text_encoder"],
        interface=demo["interface"],
        tasks=["segmentation"],
        task_options={"segmentation": {"num_points": 4096}},
    )
    module.train()
    module.vision_encoder.eval()

    started = time.perf_counter()
    records = read_records(config, "bench.train")
    fill = feature_cache(cached_config, "bench.train", records).fill(
        module.vision_encoder, batch_size=int(part["batch"])
    )
    fill_s = time.perf_counter() - started
    print(
        f"{name}: cache of {images} images filled in {fill_s:.1f} s ({fill.seconds:.1f} s encoding)",
        flush=True,
    )

    datasets = {
        "encoder": build_dataset(config, "bench.train", train=True),
        "cache": build_dataset(cached_config, "bench.train", train=True),
    }
    dataset = datasets["encoder"]
    vocabulary = Vocabulary(
        list(dataset.class_names), list(dataset.thing_classes), list(dataset.category_ids)
    )
    module.vocabularies["demo_panoptic"] = vocabulary
    task = module.tasks["segmentation"]
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)

    def epoch(which: str, limit: int | None = None) -> int:
        loader = DataLoader(
            datasets[which],
            batch_size=int(part["batch"]),
            shuffle=True,
            generator=torch.Generator().manual_seed(0),
            collate_fn=partial(collate_samples, size_divisibility=32),
            num_workers=0,
        )
        steps = 0
        for batch in loader:
            output = module(batch)
            loss, _ = task.losses(output, batch, module.context)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
            if limit is not None and steps >= limit:
                break
        return steps

    epoch("encoder", limit=1)  # warm-up: one batch each
    epoch("cache", limit=1)
    times: dict[str, list[float]] = {"encoder": [], "cache": []}
    steps = 0
    for _ in range(repeats):
        for which in times:
            started = time.perf_counter()
            steps = epoch(which)
            times[which].append(time.perf_counter() - started)
            print(f"{name}: {which} epoch {times[which][-1]:.1f} s ({steps} steps)", flush=True)
    result: dict[str, Any] = {
        "images": images,
        "image_size": part["size"],
        "batch": part["batch"],
        "steps_per_epoch": steps,
        "fill_s": round(fill_s, 2),
        "encoder_epoch": summary(times["encoder"]),
        "cache_epoch": summary(times["cache"]),
    }
    result["speedup"] = round(result["encoder_epoch"]["median_s"] / result["cache_epoch"]["median_s"], 3)
    result["speedup_spread"] = spread(paired_ratios(times["encoder"], times["cache"]))
    if do_profile:
        result["profile_cache_epoch"] = profile(
            lambda: epoch("cache", limit=2), f"{name} cache epoch, 2 batches"
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="short sanity run (8 images at 128 px, tiny SAM)"
    )
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    parser.add_argument("--data", type=Path, default=Path("data/demo"))
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--sam-images", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sam-repeats", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="torch.profiler table of 2 cached batches")
    args = parser.parse_args()
    counts = {"timm": (args.images, args.repeats), "sam": (args.sam_images, args.sam_repeats)}
    if args.quick:
        PARTS["timm"]["size"] = 128
        # a SAM of 2 blocks at 256 px: checks the code path, not the speed
        PARTS["sam"]["encoder"] = {
            "name": "sam",
            "options": {
                "variant": "vit_b",
                "image_size": 256,
                "encoder_options": {"depth": 2, "global_attn_indexes": [1]},
            },
        }
        PARTS["sam"]["size"] = 256
        counts = {"timm": (8, 1), "sam": (2, 1)}
    results: dict[str, Any] = {}
    ratios: dict[str, tuple[float, str, bool]] = {}
    spreads: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.parts:
            images, repeats = counts[name]
            results[name] = run_part(name, images, repeats, args.data, Path(scratch), args.profile)
            goal = float(PARTS[name]["goal"])
            speedup = results[name]["speedup"]
            ratios[f"feature_cache_speedup_{name}"] = (speedup, f">= {goal:g}", speedup >= goal)
            spreads[f"feature_cache_speedup_{name}"] = results[name]["speedup_spread"]
    finish("feature_cache_epoch", {"quick": args.quick, "parts": results}, ratios, spreads)


if __name__ == "__main__":
    main()
