"""NoC and IoU after k clicks on hand-built IoU curves."""

from __future__ import annotations

import math

import pytest
import torch

from findlit.metrics.interactive import InteractiveMetrics, clicks_to_reach


def test_clicks_to_reach_is_the_first_click_at_the_threshold_else_the_cap() -> None:
    curves = torch.tensor(
        [
            [0.3, 0.6, 0.86, 0.91, 0.95],
            [0.9, 0.8, 0.9, 0.9, 0.9],  # reached at once; a later dip does not matter
            [0.1, 0.2, 0.3, 0.4, 0.5],  # never reaches 0.85
        ]
    )
    assert clicks_to_reach(curves, 0.85, max_clicks=20).tolist() == [3.0, 1.0, 20.0]
    assert clicks_to_reach(curves, 0.5, max_clicks=20).tolist() == [2.0, 1.0, 5.0]


def test_metrics_average_noc_and_iou_after_clicks() -> None:
    metric = InteractiveMetrics(max_clicks=6)
    nan = math.nan
    metric.update(
        torch.tensor(
            [
                [0.4, 0.7, 0.82, 0.86, 0.92, nan],  # stopped after 0.9 was reached
                [0.95, 0.95, 0.95, 0.95, 0.95, 0.95],
            ]
        ),
        box_ious=torch.tensor([0.5, 0.7]),
    )
    values = {k: float(v) for k, v in metric.compute().items()}
    assert values["NoC@50"] == pytest.approx((2 + 1) / 2)
    assert values["NoC@80"] == pytest.approx((3 + 1) / 2)
    assert values["NoC@85"] == pytest.approx((4 + 1) / 2)
    assert values["NoC@90"] == pytest.approx((5 + 1) / 2)
    assert values["mIoU@1"] == pytest.approx((0.4 + 0.95) / 2)
    assert values["mIoU@3"] == pytest.approx((0.82 + 0.95) / 2)
    assert values["mIoU@5"] == pytest.approx((0.92 + 0.95) / 2)
    assert values["box_mIoU"] == pytest.approx(0.6)


def test_a_curve_needs_the_reported_clicks() -> None:
    metric = InteractiveMetrics(max_clicks=20)
    with pytest.raises(ValueError, match="after clicks"):
        metric.update(torch.tensor([[0.5, 0.6, math.nan, 0.7, 0.8]]))
    with pytest.raises(ValueError, match="float"):
        metric.update(torch.zeros(2, 21))
