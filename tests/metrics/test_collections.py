import numpy as np
import pytest
import torch

from findlit.metrics import (
    SegmentationMetrics,
    clone_for_stage,
    grounding_metrics,
    interleave_metrics,
    retrieval_metrics,
    segmentation_metrics,
)
from findlit.metrics.collections import _relabel, segments_of_map

THING, STUFF = 1, 2


def _panoptic_targets() -> torch.Tensor:
    """Three 4x4 images: stuff background with thing instances."""
    maps = torch.zeros(3, 4, 4, 2, dtype=torch.long)
    maps[..., 0] = STUFF
    maps[0, 0:2, 0:2] = torch.tensor([THING, 1])
    maps[0, 2:4, 2:4] = torch.tensor([THING, 2])
    maps[1, 0:2, 0:2] = torch.tensor([THING, 1])
    maps[2, 1:3, 1:3] = torch.tensor([THING, 1])
    return maps


def _instances(maps: torch.Tensor, with_scores: bool) -> list[dict[str, torch.Tensor]]:
    out = []
    for m in maps:
        ids = [int(i) for i in m[..., 1][m[..., 0] == THING].unique()]
        masks = torch.stack([(m[..., 0] == THING) & (m[..., 1] == i) for i in ids])
        item = {"masks": masks, "labels": torch.full((len(ids),), THING, dtype=torch.long)}
        if with_scores:
            item["scores"] = torch.ones(len(ids))
        out.append(item)
    return out


def _feed(metrics, panoptic_pred, panoptic_target, batch_size, semantic=True):
    for s in range(0, panoptic_target.shape[0], batch_size):
        sl = slice(s, s + batch_size)
        metrics.update(
            panoptic_pred=panoptic_pred[sl],
            panoptic_target=panoptic_target[sl],
            instance_preds=_instances(panoptic_pred[sl], with_scores=True),
            instance_targets=_instances(panoptic_target[sl], with_scores=False),
            semantic_pred=panoptic_pred[sl][..., 0] if semantic else None,
            semantic_target=panoptic_target[sl][..., 0] if semantic else None,
        )


def _metrics() -> SegmentationMetrics:
    return segmentation_metrics(things=[THING], stuffs=[STUFF], num_classes=3)


def test_perfect_segmentation():
    target = _panoptic_targets()
    metrics = _metrics()
    _feed(metrics, target.clone(), target, batch_size=3)
    out = metrics.compute()
    assert set(out) == {"PQ", "SQ", "RQ", "PQ_th", "PQ_st", "AP", "AP50", "AP75", "mIoU"}
    for key in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st", "AP", "AP50", "AP75", "mIoU"):
        assert out[key].item() == pytest.approx(1.0), key


def test_missing_thing_lowers_rq_by_hand():
    target = _panoptic_targets()
    pred = target.clone()
    pred[0, 2:4, 2:4] = torch.tensor([STUFF, 0])  # the second thing of image 0 is missed (predicted as stuff)
    metrics = segmentation_metrics(things=[THING], stuffs=[STUFF], num_classes=3, include=("PQ",))
    _feed(metrics, pred, target, batch_size=3)
    out = metrics.compute()
    # things: TP 3 (IoU 1), FN 1 -> RQ = 3 / (3 + 0.5) , SQ = 1
    rq_th = 3 / 3.5
    # stuff: image 0 IoU = 8 / 12, images 1 and 2 IoU = 1 -> SQ = (2/3 + 2) / 3, RQ = 1
    sq_st = (8 / 12 + 2) / 3
    assert set(out) == {"PQ", "SQ", "RQ", "PQ_th", "PQ_st"}
    assert out["PQ_th"].item() == pytest.approx(rq_th)
    assert out["PQ_st"].item() == pytest.approx(sq_st)
    assert out["RQ"].item() == pytest.approx((rq_th + 1) / 2)
    assert out["SQ"].item() == pytest.approx((1 + sq_st) / 2)
    assert out["PQ"].item() == pytest.approx((rq_th + sq_st) / 2)


def test_semantic_miou_by_hand_with_ignore():
    metrics = segmentation_metrics(things=[THING], stuffs=[STUFF], num_classes=3, include=("mIoU",))
    pred = torch.tensor([[[0, 0], [1, 2]]])
    target = torch.tensor([[[0, 1], [1, 2]]])
    metrics.update(semantic_pred=pred, semantic_target=target)
    # class 0: 1/2, class 1: 1/2, class 2: 1/1
    assert metrics.compute()["mIoU"].item() == pytest.approx((0.5 + 0.5 + 1) / 3)
    metrics.reset()
    metrics.update(semantic_pred=pred, semantic_target=torch.tensor([[[0, 255], [1, 2]]]))
    assert metrics.compute()["mIoU"].item() == pytest.approx(1.0)


def test_batch_sizes_one_and_three_agree_and_reset():
    target = _panoptic_targets()
    pred = target.clone()
    pred[0, 2:4, 2:4] = torch.tensor([STUFF, 0])
    pred[2, 0, :] = torch.tensor([THING, 1])
    one, three = _metrics(), _metrics()
    _feed(one, pred, target, batch_size=1)
    _feed(three, pred, target, batch_size=3)
    a, b = one.compute(), three.compute()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].item() == pytest.approx(b[key].item()), key
    assert a["PQ"] < 1 and a["AP"] < 1 and a["mIoU"] < 1
    three.reset()
    _feed(three, target.clone(), target, batch_size=3)
    assert three.compute()["PQ"].item() == pytest.approx(1.0)


def test_segmentation_prefix_clone():
    base = _metrics()
    val = clone_for_stage(base, "val", "coco")
    target = _panoptic_targets()
    _feed(val, target.clone(), target, batch_size=2)
    out = val.compute()
    assert "val/coco/PQ" in out and "val/coco/mIoU" in out and "val/coco/AP50" in out
    assert base.prefix == ""
    assert base.metrics["PQ"].tp.sum() == 0  # the clone has its own states


def test_retrieval_and_grounding_collections_prefixes():
    retrieval = clone_for_stage(retrieval_metrics(), "test", "coco")
    ids = torch.arange(4)
    retrieval.update(torch.eye(4), ids, torch.eye(4).repeat_interleave(5, 0), ids.repeat_interleave(5))
    out = retrieval.compute()
    assert set(out) == {f"test/coco/{d}R@{k}" for d in "IT" for k in (1, 5, 10)}

    grounding = clone_for_stage(grounding_metrics(), "val", "refcocog")
    grounding.update(torch.ones(2, 3, 3, dtype=torch.bool), torch.ones(2, 3, 3, dtype=torch.bool))
    out = grounding.compute()
    assert set(out) == {f"val/refcocog/{k}" for k in ("cIoU", "mIoU", "P@0.5", "P@0.7", "P@0.9")}
    assert out["val/refcocog/cIoU"].item() == pytest.approx(1.0)


def test_interleave_collection():
    interleave = clone_for_stage(interleave_metrics(), "val", "findbench")
    interleave["grounding"].update(
        torch.ones(1, 3, 3, dtype=torch.bool), torch.ones(1, 3, 3, dtype=torch.bool)
    )
    ids = torch.arange(3)
    interleave["retrieval"].update(torch.eye(3), ids, torch.eye(3), ids)
    out = interleave.compute()
    assert out["val/findbench/cIoU"].item() == pytest.approx(1.0)
    assert out["val/findbench/IR@5"].item() == pytest.approx(1.0)
    interleave.reset()
    assert interleave["retrieval"].image_embeddings == []


def test_segments_of_map_numbers_segments_densely_whatever_their_ids() -> None:
    """COCO's PNG ids reach 256^3: the segments come out as 1..N, with their categories and crowd flags."""
    known = torch.tensor([THING, STUFF])
    small = torch.zeros(6, 8, 2, dtype=torch.long)
    small[..., 0] = STUFF
    small[..., 1] = 3
    small[0:2, 0:3] = torch.tensor([THING, 1])
    small[3:5, 4:8] = torch.tensor([THING, -2])  # a crowd region
    small[5, :] = torch.tensor([0, 0])  # a category outside ``known``: void
    large = small.clone()
    large[..., 1] = torch.where(small[..., 1] == 1, 16_000_000, small[..., 1] * 1000)
    for panoptic in (small, large):
        segments = segments_of_map(panoptic, known)
        assert segments.segment_ids.tolist() == [1, 2, 3]
        assert int(segments.ids.max()) == 3 and bool((segments.ids[5] == 0).all())
        # the same pixels form the same segments in both maps
        by_segment = {
            int(i): (int(c), bool(k))
            for i, c, k in zip(segments.segment_ids, segments.categories, segments.iscrowd, strict=True)
        }
        assert sorted(by_segment.values()) == [(THING, False), (THING, True), (STUFF, False)]
        assert by_segment[int(segments.ids[0, 0])] == (THING, False)
        assert by_segment[int(segments.ids[3, 4])] == (THING, True)
    # no void pixel: the segments still start at 1
    assert segments_of_map(small[:5], known).ids.min() == 1


def test_relabel_is_the_rank_among_unique_values() -> None:
    generator = np.random.default_rng(0)
    values = np.repeat(generator.choice([0, 7, 3, 16_000_000, 42], size=200), generator.integers(1, 9, 200))
    labels, keys, first = _relabel(values)
    unique, inverse = np.unique(values, return_inverse=True)
    np.testing.assert_array_equal(keys, unique)
    np.testing.assert_array_equal(labels, inverse)
    np.testing.assert_array_equal(values[first], keys)
    assert all(int(np.flatnonzero(values == key)[0]) == index for key, index in zip(keys, first, strict=True))
