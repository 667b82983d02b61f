"""Benchmark 2: the machine's limit: achieved FLOP/s of the interface step / FLOP/s of a large fp32 matmul.

    .venv/bin/python scripts/bench/flops_fraction.py [--quick] [--widths 256 512] [--matmul 2048]

The interface steps are benchmark 1's (decoder of the FIND interface on the full segmentation
batch, forward+backward, batch 2 at 512 px, see interface_vs_peer.py): ``ours_sentences`` (the
goal's ratio) and ``ours_queries`` (FIND's class queries in the sequence, reported). Its FLOPs are
counted once with ``torch.utils.flop_counter.FlopCounterMode`` (plus a formula for the CPU flash
attention kernels, which the counter does not know); then the step and an ``N x N @ N x N`` fp32
matmul (2 N^3 FLOPs) alternate after warm-up. Ratio: (FLOPs / median step time) / (matmul FLOPs /
median matmul time), per width (goal >= 0.5).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from _common import alternate, finish, paired_ratios, profile, spread, summary
from interface_vs_peer import NUM_LABELS, build_case
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

aten = torch.ops.aten


def _cpu_flash_forward(
    query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any
) -> int:
    return int(sdpa_flop_count(query, key, value))


def _cpu_flash_backward(
    grad_out: Any, query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any
) -> int:
    return int(sdpa_backward_flop_count(grad_out, query, key, value))


CPU_ATTENTION = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_forward,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_backward,
}


def count_flops(step: Any) -> tuple[int, dict[str, int]]:
    """Total FLOPs of one call of ``step`` and the FLOPs per aten op."""
    counter = FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION)
    with counter:
        step()
    per_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), per_op


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="seconds-long sanity run")
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--classes", type=int, default=NUM_LABELS)
    parser.add_argument("--matmul", type=int, default=2048, help="side N of the fp32 matmul")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table of the step")
    args = parser.parse_args()
    if args.quick:
        args.size, args.repeats, args.widths, args.classes, args.matmul = 128, 1, [64], 20, 512

    side = args.matmul
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(side, side, generator=generator)
    b = torch.randn(side, side, generator=generator)
    out = torch.empty(side, side)
    matmul_repeats = 10

    def matmul() -> None:
        for _ in range(matmul_repeats):
            torch.mm(a, b, out=out)

    matmul_flops = 2 * side**3 * matmul_repeats
    widths: dict[str, Any] = {}
    ratios: dict[str, tuple[float, str, bool]] = {}
    spreads: dict[str, tuple[float, float]] = {}
    cases = [(hidden, name) for hidden in args.widths for name in ("ours_sentences", "ours_queries")]
    for hidden, name in cases:
        step = build_case(hidden, args.size, args.batch, args.classes)["steps"][name]
        step()  # warm-up outside the counter
        flops, per_op = count_flops(step)
        times = alternate({"interface": step, "matmul": matmul}, args.repeats, warmup=1)
        step_s = summary(times["interface"])["median_s"]
        matmul_s = summary(times["matmul"])["median_s"]
        achieved = flops / step_s
        peak = matmul_flops / matmul_s
        fraction = achieved / peak
        top = dict(sorted(per_op.items(), key=lambda item: -item[1])[:8])
        # per repeat: achieved / peak = (flops / step time) / (matmul flops / matmul time)
        fractions = [flops / matmul_flops / r for r in paired_ratios(times["interface"], times["matmul"])]
        key = (
            f"flops_fraction_d{hidden}"
            if name == "ours_sentences"
            else f"class_queries_flops_fraction_d{hidden}"
        )
        spreads[key] = spread(fractions)
        widths[f"{hidden}_{name}"] = {
            "step_flops": flops,
            "step": summary(times["interface"]),
            "matmul": summary(times["matmul"]),
            "achieved_gflops": round(achieved / 1e9, 2),
            "matmul_gflops": round(peak / 1e9, 2),
            "fraction": round(fraction, 4),
            "flops_by_op": top,
        }
        if name == "ours_sentences":
            ratios[f"flops_fraction_d{hidden}"] = (round(fraction, 4), ">= 0.5", fraction >= 0.5)
        else:
            ratios[f"class_queries_flops_fraction_d{hidden}"] = (
                round(fraction, 4),
                "reported",
                fraction >= 0.5,
            )
        print(
            f"hidden {hidden}, {name}: {flops / 1e9:.1f} GFLOP per step in {step_s:.3f} s = "
            f"{achieved / 1e9:.1f} GFLOP/s; "
            f"{side}^3 fp32 matmul {peak / 1e9:.1f} GFLOP/s; fraction {fraction:.3f}",
            flush=True,
        )
        if args.profile:
            widths[f"{hidden}_{name}"]["profile"] = profile(step, f"{name} step, hidden {hidden}")
    finish(
        "flops_fraction",
        {
            "settings": {
                "size": args.size,
                "batch": args.batch,
                "classes": args.classes,
                "matmul_side": side,
                "repeats": args.repeats,
                "quick": args.quick,
            },
            "widths": widths,
        },
        ratios,
        spreads,
    )


if __name__ == "__main__":
    main()
