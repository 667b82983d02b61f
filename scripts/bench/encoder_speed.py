"""Throughput of the embedded default encoders on this machine (offline; CPU unless --device says otherwise).

Usage:
    python scripts/bench/encoder_speed.py [--size 256] [--batch 16] [--iters 10]
                                          [--prompts 1000] [--repeats 3]
                                          [--dtypes float32 bfloat16] [--device cpu]

Prints images/s of the default vision encoder (timm tf_efficientnet_lite0 with the package's weights,
res2..res5 pyramid) on random images, and sentences/s of the default text encoder (all-MiniLM-L6-v2)
on "a photo of a <class name>." prompts for the ImageNet class names (the first name of each class).
Each is timed several times; the median and the best rate are printed, since other processes on the
same cores slow some runs down (the load average is printed too).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from timm.data import ImageNetInfo

from findlit.encoders.hf_text import HFTextEncoder
from findlit.encoders.timm_vision import TimmVisionEncoder


def class_prompts(count: int) -> list[str]:
    info = ImageNetInfo()
    names = [info.index_to_description(i).split(",")[0] for i in range(info.num_classes())]
    return [f"a photo of a {names[i % len(names)]}." for i in range(count)]


def rates(run: Callable[[], object], items: int, repeats: int, device: str) -> tuple[float, float]:
    """(median, best) items/s over ``repeats`` timed calls of ``run``."""
    measured = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        measured.append(items / (time.perf_counter() - start))
    return statistics.median(measured), max(measured)


def vision_speed(size: int, batch: int, iters: int, dtype: str, device: str) -> tuple[float, float]:
    encoder = TimmVisionEncoder(compute_dtype=dtype).to(device)
    images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    for _ in range(2):  # warm-up: allocator, kernel selection
        encoder(images)
    return rates(lambda: encoder(images), batch, iters, device)


def text_speed(prompts: list[str], repeats: int, dtype: str, device: str) -> tuple[float, float]:
    encoder = HFTextEncoder(compute_dtype=dtype).to(device)
    encoder(prompts[:32])  # warm-up
    return rates(lambda: encoder(prompts), len(prompts), repeats, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--iters", type=int, default=10, help="timed batches of images")
    parser.add_argument("--prompts", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the prompts")
    parser.add_argument(
        "--dtypes", nargs="+", default=["float32"], choices=["float32", "bfloat16", "float16"]
    )
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    prompts = class_prompts(args.prompts)
    for dtype in args.dtypes:
        median, best = vision_speed(args.size, args.batch, args.iters, dtype, args.device)
        print(
            f"vision  tf_efficientnet_lite0 {dtype:>8}: {median:7.1f} images/s median, {best:7.1f} best "
            f"({args.size}x{args.size}, batch {args.batch}, {args.iters} batches)"
        )
        median, best = text_speed(prompts, args.repeats, dtype, args.device)
        print(
            f"text    all-MiniLM-L6-v2      {dtype:>8}: {median:7.1f} sentences/s median, {best:7.1f} best "
            f"({len(prompts)} class-name prompts, {args.repeats} passes)"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
