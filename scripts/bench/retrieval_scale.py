"""Benchmark 5: retrieval evaluation at scale: recall@1/5/10 over 5,000 images x 25,000 captions.

    .venv/bin/python scripts/bench/retrieval_scale.py [--quick] [--images 5000] [--captions-per-image 5]

Random embeddings (E = 512, 5 captions per image, each caption a noisy copy of its image's
embedding) go through ``findlit.metrics.RetrievalRecall`` (``update`` in batches of 256 images,
then ``compute``; chunk size 1024). Each repeat runs in a fresh child process, so that its peak
resident memory is its own: peak = ``VmHWM`` (high-water RSS, from /proc/self/status) after compute
minus ``VmRSS`` just before the first update (the high-water mark is reset there through
/proc/self/clear_refs), i.e. the memory the metric itself needed (inputs
included; torch CPU tensors are invisible to tracemalloc). A naive full-matrix reference
(``texts @ images.T`` at once, same ranking rule) runs in its own child too, alternating with
findlit's, and must give the same recalls. Ratio: peak GB / 2 GB (goal <= 1.0).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

import torch
from _common import finish, summary

from findlit.metrics import RetrievalRecall

LIMIT_BYTES = 2 * 1024**3


def status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def make_embeddings(images: int, per_image: int, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    image_embeddings = torch.randn(images, dim, generator=generator)
    text_image_ids = torch.arange(images).repeat_interleave(per_image)
    texts = image_embeddings[text_image_ids] + 1.5 * torch.randn(images * per_image, dim, generator=generator)
    return image_embeddings, texts, text_image_ids


def naive(images: torch.Tensor, texts: torch.Tensor, text_image_ids: torch.Tensor) -> dict[str, float]:
    """The whole similarity matrix at once (reference, not memory-bounded)."""
    images = torch.nn.functional.normalize(images, dim=-1)
    texts = torch.nn.functional.normalize(texts, dim=-1)
    sims = texts @ images.T  # [T, N]
    positive = sims.gather(1, text_image_ids[:, None])
    ir = (sims > positive).sum(1)
    sims_t = sims.T  # [N, T]
    is_positive = text_image_ids[None, :] == torch.arange(images.shape[0])[:, None]
    best = sims_t.masked_fill(~is_positive, float("-inf")).max(1).values
    tr = (sims_t > best[:, None]).sum(1)
    out = {f"IR@{k}": float((ir < k).float().mean()) for k in (1, 5, 10)}
    out.update({f"TR@{k}": float((tr < k).float().mean()) for k in (1, 5, 10)})
    return out


def child(implementation: str, images: int, per_image: int, dim: int) -> None:
    """Run one evaluation and print a JSON line with its time and memory."""
    image_embeddings, texts, text_image_ids = make_embeddings(images, per_image, dim)
    ids = torch.arange(images)
    try:  # reset the high-water mark to the current RSS (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass
    before = status_kib("VmRSS")
    started = time.perf_counter()
    if implementation == "findlit":
        metric = RetrievalRecall(chunk_size=1024)
        for start in range(0, images, 256):
            stop = min(start + 256, images)
            rows = (text_image_ids >= start) & (text_image_ids < stop)
            metric.update(image_embeddings[start:stop], ids[start:stop], texts[rows], text_image_ids[rows])
        recalls = {key: float(value) for key, value in metric.compute().items()}
    else:
        recalls = naive(image_embeddings, texts, text_image_ids)
    seconds = time.perf_counter() - started
    peak = (status_kib("VmHWM") - before) * 1024
    print(json.dumps({"seconds": seconds, "peak_bytes": peak, "recalls": recalls}))


def run_child(implementation: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "--child",
        implementation,
        "--images",
        str(args.images),
        "--captions-per-image",
        str(args.captions_per_image),
        "--dim",
        str(args.dim),
    ]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="seconds-long sanity run (500 x 2,500)")
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--captions-per-image", type=int, default=5)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", choices=["findlit", "naive"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.images, args.captions_per_image, args.dim)
        return
    if args.quick:
        args.images, args.repeats = 500, 1
    runs: dict[str, list[dict[str, Any]]] = {"findlit": [], "naive": []}
    for _ in range(args.repeats):
        for implementation in runs:
            runs[implementation].append(run_child(implementation, args))
    same = all(
        abs(a["recalls"][key] - b["recalls"][key]) < 1e-6
        for a, b in zip(runs["findlit"], runs["naive"], strict=True)
        for key in a["recalls"]
    )
    result: dict[str, Any] = {
        "settings": {
            "images": args.images,
            "captions": args.images * args.captions_per_image,
            "dim": args.dim,
            "repeats": args.repeats,
            "quick": args.quick,
            "memory": "VmHWM - VmRSS before, child process",
        },
        "recalls": runs["findlit"][0]["recalls"],
        "same_recalls_as_naive": same,
    }
    for implementation, values in runs.items():
        result[implementation] = {
            "time": summary([run["seconds"] for run in values]),
            "peak_bytes": max(run["peak_bytes"] for run in values),
        }
        print(
            f"{implementation}: median {result[implementation]['time']['median_s']:.2f} s, peak "
            f"{result[implementation]['peak_bytes'] / 2**20:.0f} MiB",
            flush=True,
        )
    peak_ratio = result["findlit"]["peak_bytes"] / LIMIT_BYTES
    time_ratio = result["findlit"]["time"]["median_s"] / result["naive"]["time"]["median_s"]
    finish(
        "retrieval_scale",
        result,
        {
            "retrieval_time_findlit_over_naive": (round(time_ratio, 3), "reported only", True),
            "retrieval_peak_memory_over_2GB": (round(peak_ratio, 4), "<= 1.0", peak_ratio <= 1.0 and same),
        },
    )


if __name__ == "__main__":
    main()
