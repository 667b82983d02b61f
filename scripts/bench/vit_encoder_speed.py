"""Images per second of the ViT encoders on this machine: open_clip ViT-B-16 at 224, SAM ViT-B at 1024.

Usage:
    python scripts/bench/vit_encoder_speed.py [--batch 1 2] [--repeats 3] [--dtype float32] [--threads N]

Random weights (no downloads): the speed of a ViT does not depend on its weights. Each
configuration runs twice to warm up, then ``--repeats`` timed forward passes through the encoder
contract (normalisation, encoder, parameter-free pyramid); it prints the median seconds per batch
and images/s.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from findlit.encoders import VisionEncoder, build_encoder


def _time(encoder: VisionEncoder, batch: int, size: int, repeats: int) -> list[float]:
    images = torch.rand(batch, 3, size, size)
    for _ in range(2):  # warm-up: allocator, oneDNN kernels for this shape
        encoder(images)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        encoder(images)
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--only", choices=["open_clip", "sam"], default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, compute dtype {args.dtype}")

    def vision(name: str, **options: object) -> Callable[[], VisionEncoder]:
        def build() -> VisionEncoder:
            encoder = build_encoder(name, compute_dtype=args.dtype, **options)
            assert isinstance(encoder, VisionEncoder)
            return encoder

        return build

    builders = {
        "open_clip": (vision("open_clip_vision", model="ViT-B-16"), 224),
        "sam": (vision("sam", variant="vit_b"), 1024),
    }
    for name, (build, size) in builders.items():
        if args.only and name != args.only:
            continue
        start = time.perf_counter()
        encoder = build()
        built = time.perf_counter() - start
        parameters = sum(p.numel() for p in encoder.frozen_parameters())
        print(f"{encoder.spec.name}: {parameters / 1e6:.1f} M parameters, built in {built:.1f} s")
        for batch in args.batch:
            seconds = _time(encoder, batch, size, args.repeats)
            median = statistics.median(seconds)
            print(
                f"  {size}x{size} batch {batch}: {median:.3f} s/batch (min {min(seconds):.3f}, "
                f"max {max(seconds):.3f}) -> {batch / median:.2f} images/s"
            )


if __name__ == "__main__":
    main()
