"""findlit's PanopticQuality equals panopticapi's pq_compute on the COCO sample's perturbed cases.

The expected figures were computed by the official panopticapi on the same cases
(tests/metrics/panoptic_cases.py writes them and says how to regenerate the fixture).
"""

from __future__ import annotations

import json

import pytest
import torch

from findlit.metrics import panoptic_prediction_map, panoptic_target_map, segmentation_metrics
from findlit.metrics.panoptic_quality import PanopticQuality, PanopticSegments
from tests.metrics.panoptic_cases import FIXTURE, ImageSegments, cases

EXPECTED = json.loads(FIXTURE.read_text())["cases"]
CASES = {name: (truth, predictions, categories) for name, truth, predictions, categories in cases()}
GROUPS = {"All": "", "Things": "_th", "Stuff": "_st"}


def _segments(image: ImageSegments) -> PanopticSegments:
    return PanopticSegments.of(
        torch.from_numpy(image.ids),
        [int(s["id"]) for s in image.segments],
        [int(s["category_id"]) for s in image.segments],
        [bool(s.get("iscrowd", 0)) for s in image.segments],
    )


def _metric(categories: list[dict]) -> PanopticQuality:
    return PanopticQuality(
        things=[c["id"] for c in categories if c["isthing"]],
        stuffs=[c["id"] for c in categories if not c["isthing"]],
    )


def test_the_fixture_holds_every_case_and_the_cases_are_not_trivial() -> None:
    assert set(EXPECTED) == set(CASES)
    values = {round(EXPECTED[name]["All"]["pq"], 6) for name in EXPECTED}
    assert len(values) == len(EXPECTED)  # every perturbation changes PQ differently
    assert EXPECTED["perfect"]["All"]["pq"] == 1.0 and EXPECTED["mixed_seed0"]["All"]["pq"] < 0.1


@pytest.mark.parametrize("name", sorted(CASES))
def test_pq_sq_rq_of_all_things_stuff_and_per_category_equal_panopticapi(name: str) -> None:
    truth, predictions, categories = CASES[name]
    metric = _metric(categories)
    metric.update([_segments(p) for p in predictions], [_segments(t) for t in truth])
    result = metric.compute()
    for group, suffix in GROUPS.items():
        for key in ("pq", "sq", "rq"):
            assert float(result[key.upper() + suffix]) == pytest.approx(
                EXPECTED[name][group][key], abs=1e-6
            ), (
                group,
                key,
            )
    per_category = metric.per_category()
    for category, expected in EXPECTED[name]["per_class"].items():
        for key in ("pq", "sq", "rq"):
            assert per_category[int(category)][key] == pytest.approx(expected[key], abs=1e-6), (category, key)


def test_images_split_over_updates_and_over_metrics_merged_give_the_same_counts() -> None:
    truth, predictions, categories = CASES["mixed_seed1"]
    whole = _metric(categories)
    whole.update([_segments(p) for p in predictions], [_segments(t) for t in truth])
    first, second = _metric(categories), _metric(categories)
    first.update([_segments(predictions[0])], [_segments(truth[0])])
    second.update([_segments(predictions[1])], [_segments(truth[1])])
    first.merge_state(second)  # what a DDP sync does: the states are summed
    for key in ("tp", "fp", "fn"):
        assert torch.equal(getattr(first, key), getattr(whole, key))
    assert torch.allclose(first.iou, whole.iou, rtol=0, atol=1e-12)


def test_unknown_predicted_categories_and_unlisted_ids_are_errors() -> None:
    metric = PanopticQuality(things=[1], stuffs=[2])
    ids = torch.tensor([[1, 1], [2, 0]])
    target = PanopticSegments.of(ids, [1, 2], [1, 2])
    with pytest.raises(ValueError, match="unknown category ids \\[7\\]"):
        metric.update([PanopticSegments.of(ids, [1, 2], [1, 7])], [target])
    with pytest.raises(ValueError, match="segment ids \\[2\\]"):
        metric.update([PanopticSegments.of(ids, [1], [1])], [target])


def test_void_in_the_prediction_still_counts_in_the_targets_area() -> None:
    # target: one thing of 4 pixels; prediction covers 2 of them, the rest unassigned (void):
    # IoU 2 / 4 = 0.5 is not > 0.5, so no match (panopticapi's union keeps unassigned pixels)
    metric = PanopticQuality(things=[1], stuffs=[])
    target = PanopticSegments.of(torch.ones(2, 2, dtype=torch.int64), [1], [1])
    prediction = PanopticSegments.of(torch.tensor([[1, 1], [0, 0]]), [1], [1])
    metric.update([prediction], [target])
    assert (int(metric.tp[0]), int(metric.fp[0]), int(metric.fn[0])) == (0, 1, 1)


@pytest.mark.parametrize("name", ["false_positives", "mixed_seed0"])
def test_segmentation_metrics_from_panoptic_maps_with_crowd_equal_panopticapi(name: str) -> None:
    # the path of findlit's evaluation: class indices -> panoptic maps -> SegmentationMetrics
    truth, predictions, categories = CASES[name]
    category_ids = [int(c["id"]) for c in categories]
    index_of = {c: k for k, c in enumerate(category_ids)}
    metrics = segmentation_metrics(
        [c["id"] for c in categories if c["isthing"]],
        [c["id"] for c in categories if not c["isthing"]],
        num_classes=len(categories),
        include=("PQ",),
    )
    for prediction, target in zip(predictions, truth, strict=True):
        ids = torch.from_numpy(target.ids)
        masks = torch.stack([ids == s["id"] for s in target.segments])
        labels = torch.tensor([index_of[s["category_id"]] for s in target.segments])
        crowd = torch.tensor([s["iscrowd"] for s in target.segments])
        target_map = panoptic_target_map(masks, labels, category_ids, iscrowd=crowd)
        segments = [{"id": s["id"], "category": index_of[s["category_id"]]} for s in prediction.segments]
        pred_map = panoptic_prediction_map(torch.from_numpy(prediction.ids), segments, category_ids)
        metrics.update(panoptic_pred=pred_map[None], panoptic_target=target_map[None])
    result = metrics.compute()
    assert any(s["iscrowd"] for image in truth for s in image.segments)
    for key, (group, field) in {
        "PQ": ("All", "pq"),
        "SQ": ("All", "sq"),
        "RQ": ("All", "rq"),
        "PQ_th": ("Things", "pq"),
        "PQ_st": ("Stuff", "pq"),
    }.items():
        assert float(result[key]) == pytest.approx(EXPECTED[name][group][field], abs=1e-6), key
