"""Shared helpers of the ``make bench`` benchmarks (scripts only; the package never imports them).

Protocol: every benchmark script prints free-form lines, then one ``BENCH_RESULT {json}`` line
(read by ``run_all.py``), then its ratio as its very last line: ``ratio <name> = <value> (goal ...)``.
Compared implementations run in one process, alternating (A, B, A, B, ...) after warm-up, so that
slow drifts of a shared machine hit both alike; medians are reported, and each ratio carries its
spread: the ratio of every repeat's pair of timings, min to max (:func:`paired_ratios`). How busy the
machine was before and after a benchmark is measured by :func:`machine_load` (``run_all.py`` warns in
results.md when it was busy: two jobs at once on two cores slow each far more than twice).
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


def paired_ratios(numerator: list[float], denominator: list[float]) -> list[float]:
    """The ratio of each repeat's pair of timings (repeat i of A over repeat i of B)."""
    return [a / b for a, b in zip(numerator, denominator, strict=True)]


def spread(values: list[float]) -> tuple[float, float]:
    """(min, max) of some ratios, rounded."""
    return round(min(values), 4), round(max(values), 4)


BUSY_FRACTION = 0.2
"""Share of all cores busy (or stolen by the hypervisor) while no benchmark runs above which a
measurement is marked as taken on a busy machine."""


def _cpu_ticks() -> tuple[int, int, int]:
    """(total, idle + iowait, steal) jiffies of all CPUs since boot, from /proc/stat (zeros elsewhere)."""
    try:
        with open("/proc/stat") as handle:
            fields = [int(v) for v in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0, 0
    steal = fields[7] if len(fields) > 7 else 0
    return sum(fields[:8]), fields[3] + (fields[4] if len(fields) > 4 else 0), steal


def machine_load(seconds: float = 1.0) -> dict[str, Any]:
    """How busy the machine is now: load averages and, over ``seconds``, the busy and stolen CPU shares.

    Called while no benchmark runs (before and after one), so any busy share is someone else's work.
    """
    total0, idle0, steal0 = _cpu_ticks()
    time.sleep(seconds)
    total1, idle1, steal1 = _cpu_ticks()
    elapsed = max(total1 - total0, 1)
    busy = 1.0 - (idle1 - idle0) / elapsed
    stolen = (steal1 - steal0) / elapsed
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "loadavg_1m": round(load[0], 2),
        "busy_fraction": round(busy, 3),
        "steal_fraction": round(stolen, 3),
        "busy": busy > BUSY_FRACTION or stolen > BUSY_FRACTION / 4,
    }


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
    spreads: Mapping[str, tuple[float, float]] | None = None,
) -> None:
    """Print the result line, then every ratio; the last line printed is the (last) ratio.

    Args:
        name: the benchmark's name (key in results.json).
        result: its measurements (JSON-serialisable).
        ratios: ``{ratio name: (value, goal as text, goal met)}``.
        spreads: ``{ratio name: (min, max)}`` over the repeats, for the ratios that have repeats.

    """
    spreads = spreads or {}
    result = {
        "benchmark": name,
        "machine": machine(),
        **result,
        "ratios": {
            key: {"value": value, "goal": goal, "met": met, "spread": spreads.get(key)}
            for key, (value, goal, met) in ratios.items()
        },
    }
    print(RESULT_PREFIX + json.dumps(result, default=str), flush=True)
    for key, (value, goal, met) in ratios.items():
        verdict = "reported" if goal.startswith("reported") else "met" if met else "NOT met"
        low_high = f" [repeats {spreads[key][0]:.4g} to {spreads[key][1]:.4g}]" if key in spreads else ""
        print(f"ratio {key} = {value:.4g}{low_high} (goal {goal}: {verdict})", flush=True)


def profile(step: Callable[[], object], label: str, rows: int = 12) -> str:
    """Run ``step`` once under ``torch.profiler`` and return (and print) its top ops by self CPU time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=48)
    print(f"--- profile: {label} (torch.profiler, top {rows} ops by self CPU time) ---\n{table}", flush=True)
    return table
