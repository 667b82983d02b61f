"""Light checks of the benchmark helpers in scripts/bench (no timing is asserted)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "scripts" / "bench"
sys.path.insert(0, str(BENCH))

import _common  # noqa: E402
import metric_speed  # noqa: E402


def test_alternate_runs_each_step_in_turn() -> None:
    calls: list[str] = []
    times = _common.alternate({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=2)
    assert calls == ["a", "b"] * 3  # one warm-up round, then two timed rounds
    assert [len(v) for v in times.values()] == [2, 2]


def test_finish_prints_the_result_then_the_ratio_last(capsys: pytest.CaptureFixture[str]) -> None:
    _common.finish("x", {"value": 1}, {"r": (0.5, "<= 1.0", True)})
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[0].removeprefix(_common.RESULT_PREFIX))["ratios"]["r"]["met"] is True
    assert lines[-1].startswith("ratio r = 0.5")


def test_reference_pq_agrees_with_findlit() -> None:
    data = metric_speed.make_data(4, 64)
    assert metric_speed.reference_pq(data) == pytest.approx(metric_speed.findlit_pq(data), abs=1e-6)
