"""Run every benchmark of ``make bench``, then write bench/results.json and bench/results.md.

    .venv/bin/python scripts/bench/run_all.py [--quick] [--only interface_vs_peer ...] [--out bench]

Each benchmark runs in its own subprocess (its compared implementations alternate inside it), its
output is streamed, and its ``BENCH_RESULT`` line is collected. ``--quick`` passes ``--quick`` to
every benchmark and writes ``results.quick.json`` / ``results.quick.md`` instead (not for the README).
``--only NAME ...`` re-runs some benchmarks and keeps the other entries of an existing results file
(each entry records its own date). ``--readme README.md`` replaces the text between
``<!-- bench:start -->`` and ``<!-- bench:end -->`` in that file with the table, when both
markers are there. The last lines printed are every ratio.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import RESULT_PREFIX, machine, machine_load

HERE = Path(__file__).resolve().parent
BENCHMARKS: dict[str, str] = {
    "interface_vs_peer": "1. interface vs transformers Mask2Former decoder (fwd+bwd time)",
    "flops_fraction": "2. interface step FLOP/s / fp32 matmul FLOP/s",
    "feature_cache_epoch": "3. training epoch: encoder / feature cache",
    "prompt_scaling": "4. inference time with many class names",
    "retrieval_scale": "5. retrieval recall 5,000 x 25,000: peak memory",
    "metric_speed": "6. PQ and mask AP: findlit / reference time",
    "coco_scale_eval": "7. COCO-scale evaluation (5,000 images): findlit / panopticapi + pycocotools",
}
SEPARATE = {"coco_scale_eval"}
"""Benchmarks left out unless named with --only or --from-log: bench 7 needs a panopticapi checkout
(FINDLIT_PANOPTICAPI) and about 20 minutes; its last entry is kept in results.json."""


def run(name: str, quick: bool, extra: list[str]) -> tuple[dict[str, Any] | None, float, int]:
    command = [sys.executable, str(HERE / f"{name}.py"), *(["--quick"] if quick else []), *extra]
    print(f"=== {name}: {' '.join(command[1:])}", flush=True)
    started = time.perf_counter()
    result = None
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, bufsize=1) as process:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith(RESULT_PREFIX):
                result = json.loads(line[len(RESULT_PREFIX) :])
            else:
                print(line, end="", flush=True)
        code = process.wait()
    return result, time.perf_counter() - started, code


def _was_busy(entry: dict[str, Any]) -> bool:
    """Whether the machine was busy before or after the benchmark of ``entry`` (other work running)."""
    load = entry.get("load")
    return bool(load) and (load["before"]["busy"] or load["after"]["busy"])


def _load_text(load: dict[str, Any]) -> str:
    return ", ".join(
        f"{when}: {load[when]['busy_fraction']:.0%} busy, load {load[when]['loadavg_1m']}"
        for when in ("before", "after")
    )


def table(results: dict[str, Any], info: dict[str, Any], date: str, quick: bool) -> str:
    """The markdown table of every ratio, with the date(s) and the machine."""
    dates = sorted({entry.get("date", date) for entry in results.values()})
    when = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]} (benchmarks re-run apart)"
    lines = [
        f"Measured {when} on {info['cpu']} ({info['cores']} cores, torch {info['torch']}, "
        f"{info['torch_threads']} threads){' — QUICK sanity settings, not a measurement' if quick else ''}.",
        "",
        "| benchmark | ratio | value | spread over repeats | goal | met |",
        "|---|---|---|---|---|---|",
    ]
    busy = [f"{name} ({_load_text(entry['load'])})" for name, entry in results.items() if _was_busy(entry)]
    if busy:
        lines[1:1] = [
            "",
            "**Warning: the machine was busy around " + "; ".join(busy) + ". Other work on these cores "
            "slows a benchmark far more than its share; do not trust these ratios.**",
        ]
    for name, title in BENCHMARKS.items():
        entry = results.get(name)
        if entry is None:
            continue
        if "error" in entry:
            lines.append(f"| {title} | — | failed ({entry['error']}) | — | — | no |")
            continue
        for ratio, value in entry["ratios"].items():
            # a reported-only ratio has no goal to meet
            met = "—" if str(value["goal"]).startswith("reported") else "yes" if value["met"] else "no"
            low_high = value.get("spread")
            spread_text = f"{low_high[0]:.4g} to {low_high[1]:.4g}" if low_high else "one measurement"
            lines.append(
                f"| {title} | `{ratio}` | {value['value']:.4g} | {spread_text} | {value['goal']} | {met} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every benchmark with --quick")
    parser.add_argument(
        "--only", nargs="+", choices=list(BENCHMARKS), default=[b for b in BENCHMARKS if b not in SEPARATE]
    )
    parser.add_argument(
        "--from-log",
        nargs="+",
        default=[],
        metavar="NAME=LOG",
        help="take a benchmark's result from the saved output of its own run instead of running it",
    )
    parser.add_argument("--out", type=Path, default=Path("bench"))
    parser.add_argument("--readme", type=Path, help="file whose bench markers get the table")
    parser.add_argument("--profile", action="store_true", help="pass --profile to benchmarks that take it")
    args = parser.parse_args()
    profiled = {"interface_vs_peer", "flops_fraction", "feature_cache_epoch", "prompt_scaling"}
    started = time.perf_counter()
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    results: dict[str, Any] = {}
    logged = dict(item.split("=", 1) for item in args.from_log)
    for name, log in logged.items():
        lines = [line for line in Path(log).read_text().splitlines() if line.startswith(RESULT_PREFIX)]
        if name not in BENCHMARKS or not lines:
            raise SystemExit(f"--from-log {name}={log}: no such benchmark or no {RESULT_PREFIX.strip()} line")
        result = json.loads(lines[-1][len(RESULT_PREFIX) :])
        stamp = datetime.datetime.fromtimestamp(Path(log).stat().st_mtime, datetime.UTC)
        results[name] = {**result, "date": stamp.strftime("%Y-%m-%d %H:%M UTC"), "from_log": log}
        # the benchmark measured the machine's load itself, before and after its timed part
        results[name]["load"] = result.get("load") or {}
    for name in [n for n in args.only if n not in logged]:
        extra = ["--profile"] if args.profile and name in profiled else []
        before = machine_load()
        result, seconds, code = run(name, args.quick, extra)
        load = {"before": before, "after": machine_load()}
        if result is None or code != 0:
            results[name] = {"error": f"exit code {code}", "seconds": round(seconds, 1)}
        else:
            results[name] = {**result, "seconds": round(seconds, 1)}
        results[name]["date"] = date
        results[name]["load"] = load
        print(f"=== {name}: {seconds:.1f} s", flush=True)
    info = machine()
    total = time.perf_counter() - started
    suffix = ".quick" if args.quick else ""
    args.out.mkdir(parents=True, exist_ok=True)
    previous = args.out / f"results{suffix}.json"
    if set(results) != set(BENCHMARKS) and previous.exists():
        kept = json.loads(previous.read_text())["benchmarks"]
        results = {
            name: results.get(name, kept.get(name)) for name in BENCHMARKS if name in results or name in kept
        }
    document = {
        "date": date,
        "machine": info,
        "quick": args.quick,
        "total_seconds": round(total, 1),
        "benchmarks": results,
    }
    (args.out / f"results{suffix}.json").write_text(json.dumps(document, indent=1, default=str) + "\n")
    markdown = table(results, info, date, args.quick)
    (args.out / f"results{suffix}.md").write_text(markdown)
    if args.readme is not None and not args.quick:
        text = args.readme.read_text()
        start, end = "<!-- bench:start -->", "<!-- bench:end -->"
        if start in text and end in text:
            head, rest = text.split(start, 1)
            args.readme.write_text(head + start + "\n" + markdown + end + rest.split(end, 1)[1])
        else:
            print(f"{args.readme}: no {start} / {end} markers, not updated", flush=True)
    print(f"\nwrote {args.out}/results{suffix}.json and .md in {total:.0f} s\n\n{markdown}", flush=True)
    for name, entry in results.items():
        for ratio, value in entry.get("ratios", {}).items():
            met = (
                "reported"
                if str(value["goal"]).startswith("reported")
                else "met"
                if value["met"]
                else "NOT met"
            )
            print(f"ratio {ratio} = {value['value']:.4g} (goal {value['goal']}: {met})")
        if "error" in entry:
            print(f"ratio {name}: failed ({entry['error']})")


if __name__ == "__main__":
    main()
