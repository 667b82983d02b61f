"""Benchmark 4: inference time on one image with 10, 100, 1,000 and 10,000 class names (prompts cached).

    .venv/bin/python scripts/bench/prompt_scaling.py [--quick] [--counts 10 100 1000 10000]

The embedded default model (configs/demo.yaml's ``model``: timm tf_efficientnet_lite0, MiniLM
text encoder, interface hidden 128, 3 layers, 30 proposals; random interface weights) runs the
segmentation task on one demo validation image (256 px): vision encoder, interface, class logits
and panoptic + instance + semantic post-processing (``SegmentationTask.predict``), under
``torch.no_grad``. The class names ``"object class <i>"`` are encoded once by the module's
``PromptCache`` before timing (untimed warm-up call), so every timed call is a cache lookup.
Vocabulary sizes alternate (10, 100, ..., 10, 100, ...) after a warm-up round. A size whose
time, extrapolated as a + b n^2 from the two sizes measured before it, exceeds ``--budget`` seconds is not run
(its estimate is reported, marked ``estimated``). Ratio: t(10,000) / t(100) (goal <= 1.5).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import torch
from _common import demo_model, finish, profile, summary

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from findlit.data.collate import collate_samples
from findlit.data.config import DatasetConfig, DatasetPaths, build_dataset
from findlit.data.transforms import TransformConfig
from findlit.module import FINDModule
from findlit.tasks.base import Vocabulary


def demo_batch(root: Path) -> dict[str, Any]:
    config = DatasetConfig(
        name="demo_panoptic",
        task="segmentation",
        format="coco_panoptic",
        paths=DatasetPaths(
            panoptic_json="annotations/panoptic_val.json", panoptic_root="panoptic_val", image_root="val"
        ),
        transforms=TransformConfig(image_size=256, lsj=False),
    )
    dataset = build_dataset(config, "bench.val", train=False, root=root)
    return dict(collate_samples([dataset[0]]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="seconds-long sanity run (10, 100, 1000 names)")
    parser.add_argument("--data", type=Path, default=Path("data/demo"))
    parser.add_argument("--counts", type=int, nargs="+", default=[10, 100, 1000, 10000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget", type=float, default=90.0, help="most estimated seconds of one call")
    parser.add_argument("--profile", action="store_true", help="torch.profiler table of the largest size")
    args = parser.parse_args()
    if args.quick:
        args.counts, args.repeats, args.budget = [10, 100, 1000], 1, 30.0

    torch.manual_seed(0)
    module = FINDModule(**demo_model(), tasks=["segmentation"])
    module.eval()
    batch = demo_batch(args.data)
    task = module.task(batch)
    largest = max(args.counts)
    names = [f"object class {i}" for i in range(largest)]
    started = time.perf_counter()
    module.prompt_cache(names)
    encode_s = time.perf_counter() - started
    print(
        f"encoded {largest} class names into the prompt cache in {encode_s:.1f} s (untimed below)", flush=True
    )

    def infer(count: int) -> Any:
        module.vocabularies["demo_panoptic"] = Vocabulary(names[:count], [i % 2 == 0 for i in range(count)])
        with torch.no_grad():
            output = module(batch)
            return task.predict(output, batch, module.context)

    # Warm-up round, ascending. Once two sizes are measured, t(n) = a + b n^2 is fitted to the last
    # two (the prototype's dense self-attention over the class queries and their tokens is
    # quadratic in n); a size whose estimate exceeds the budget is not run, its estimate is reported.
    counts = sorted(args.counts)
    infer(counts[0])  # first call: lazy initialisation, untimed
    times: dict[int, list[float]] = {}
    estimates: dict[int, float] = {}
    measured: list[tuple[int, float]] = []
    for count in counts:
        if len(measured) >= 2:
            (n1, t1), (n2, t2) = measured[-2:]
            slope = max(t2 - t1, 0.0) / (n2**2 - n1**2)
            estimate = t2 + slope * (count**2 - n2**2)
            if estimate > args.budget:
                estimates[count] = estimate
                print(
                    f"{count} names: not run, estimated {estimate:.0f} s > budget {args.budget:.0f} s",
                    flush=True,
                )
                continue
        started = time.perf_counter()
        infer(count)
        elapsed = time.perf_counter() - started
        times[count] = []
        measured.append((count, elapsed))
        print(f"{count} names: warm-up {elapsed:.2f} s", flush=True)
    for _ in range(args.repeats):
        for count in times:
            started = time.perf_counter()
            infer(count)
            times[count].append(time.perf_counter() - started)
    rows: dict[str, Any] = {str(count): summary(values) for count, values in times.items()}
    for count, estimate in estimates.items():
        rows[str(count)] = {"median_s": round(estimate, 3), "estimated": True}
    for count in counts:
        note = " (estimated, not run)" if count in estimates else ""
        print(f"{count:>6} names: median {rows[str(count)]['median_s']:.3f} s{note}", flush=True)
    result: dict[str, Any] = {
        "settings": {
            "counts": counts,
            "repeats": args.repeats,
            "model": "configs/demo.yaml",
            "quick": args.quick,
        },
        "encode_names_s": round(encode_s, 2),
        "times": rows,
        "budget_s": args.budget,
    }
    if args.profile and times:
        measured = max(times)
        result["profile"] = profile(lambda: infer(measured), f"inference with {measured} class names")
    largest = counts[-1]
    base = 100 if 100 in times else min(times)
    ratio = rows[str(largest)]["median_s"] / rows[str(base)]["median_s"]
    name = f"t{largest}_over_t{base}" + ("_estimated" if largest in estimates else "")
    finish("prompt_scaling", result, {name: (round(ratio, 3), "<= 1.5", ratio <= 1.5)})


if __name__ == "__main__":
    main()
