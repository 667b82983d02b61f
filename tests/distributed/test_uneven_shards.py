"""findlit's metrics synced over two gloo ranks of 3 and 2 images equal one process over all 5."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from findlit.metrics.mean_ap import interleave
from tests.distributed.runs import free_port, run_env, run_together


def test_interleave_is_round_robin_over_uneven_lists() -> None:
    assert interleave([[0, 2, 4], [1, 3]]) == [0, 1, 2, 3, 4]
    assert interleave([[0, 3], [1], [2]]) == [0, 1, 2, 3]
    assert interleave([[], []]) == [] and interleave([]) == []


@pytest.mark.slow
def test_metrics_of_uneven_shards_equal_one_process(tmp_path: Path) -> None:
    script = str(Path(__file__).with_name("uneven_metrics.py"))
    port, out = str(free_port()), str(tmp_path / "metrics.json")
    commands = [[sys.executable, script, str(rank), port, out] for rank in (0, 1)]
    for code, _, err in run_together(commands, [run_env(), run_env()], timeout=180):
        assert code == 0, err[-4000:]
    results = json.loads(Path(out).read_text())
    one, two = results["one"], results["two"]
    assert set(one) == set(two)
    for key in ("PQ", "AP", "mIoU", "IR@1", "TR@2", "cIoU", "P@0.5"):
        assert key in one
    assert one["AP"] > 0 and one["PQ"] > 0
    for key, value in one.items():
        assert two[key] == pytest.approx(value, abs=1e-6), key
