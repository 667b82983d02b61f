"""Shared helpers of the ``make bench`` benchmarks (scripts only; the package never imports them).

Protocol: every benchmark script prints free-form lines, then one ``BENCH_RESULT {json}`` line
(read by ``run_all.py``), then its ratio as its very last line: ``ratio <name> = <value> (goal ...)``.
Compared implementations run in one process, alternating (A, B, A, B, ...) after warm-up, so that
slow drifts of a shared machine hit both alike; medians are reported.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

RESULT_PREFIX = "BENCH_RESULT "
DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


def demo_model() -> dict[str, Any]:
    """The embedded default's ``vision_encoder``, ``text_encoder`` and ``interface``, from configs/demo.yaml.

    Read rather than copied, so the benchmarks measure the interface ``make demo`` trains.
    """
    model = yaml.safe_load(DEMO_CONFIG.read_text())["model"]
    return {key: model[key] for key in ("vision_encoder", "text_encoder", "interface")}


def machine() -> dict[str, Any]:
    """CPU model, cores, torch version and threads of this machine."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith(("model name", "hardware")):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def alternate(
    steps: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Wall seconds of each step, run in turn ``warmup`` times (untimed) then ``repeats`` times."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            started = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - started)
    return times


def summary(times: list[float]) -> dict[str, float]:
    """Median, min and max of some timings, in seconds."""
    return {
        "median_s": round(statistics.median(times), 6),
        "min_s": round(min(times), 6),
        "max_s": round(max(times), 6),
        "repeats": len(times),
    }


def finish(
    name: str,
    result: dict[str, Any],
    ratios: Mapping[str, tuple[float, str, bool]],
) -> None:
    """Print the result line, then every ratio; the last line printed is the (last) ratio.

    Args:
        name: the benchmark's name (key in results.json).
        result: its measurements (JSON-serialisable).
        ratios: ``{ratio name: (value, goal as text, goal met)}``.

    """
    result = {
        "benchmark": name,
        "machine": machine(),
        **result,
        "ratios": {
            key: {"value": value, "goal": goal, "met": met} for key, (value, goal, met) in ratios.items()
        },
    }
    print(RESULT_PREFIX + json.dumps(result, default=str), flush=True)
    for key, (value, goal, met) in ratios.items():
        verdict = "reported" if goal.startswith("reported") else "met" if met else "NOT met"
        print(f"ratio {key} = {value:.4g} (goal {goal}: {verdict})", flush=True)


def profile(step: Callable[[], object], label: str, rows: int = 12) -> str:
    """Run ``step`` once under ``torch.profiler`` and return (and print) its top ops by self CPU time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=48)
    print(f"--- profile: {label} (torch.profiler, top {rows} ops by self CPU time) ---\n{table}", flush=True)
    return table
