import pytest
import torch

from findlit.metrics import GroundingMetrics


def _mask(h, w, y0, y1, x0, x1):
    m = torch.zeros(h, w, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


def _example():
    # sample 0: identical 4x4 squares -> IoU 1 (inter 16, union 16)
    # sample 1: 4x4 vs 4x2 inside it -> IoU 0.5 (inter 8, union 16)
    # sample 2: 2x2 vs 2x2 disjoint -> IoU 0 (inter 0, union 8)
    # sample 3: both empty -> IoU 1 (inter 0, union 0)
    # sample 4: 4x4 vs 4x3 inside -> IoU 0.75 (inter 12, union 16)
    preds = torch.stack(
        [
            _mask(8, 8, 0, 4, 0, 4),
            _mask(8, 8, 0, 4, 0, 4),
            _mask(8, 8, 0, 2, 0, 2),
            torch.zeros(8, 8, dtype=torch.bool),
            _mask(8, 8, 0, 4, 0, 4),
        ]
    )
    targets = torch.stack(
        [
            _mask(8, 8, 0, 4, 0, 4),
            _mask(8, 8, 0, 4, 0, 2),
            _mask(8, 8, 4, 6, 4, 6),
            torch.zeros(8, 8, dtype=torch.bool),
            _mask(8, 8, 0, 4, 0, 3),
        ]
    )
    return preds, targets


def test_hand_example():
    metric = GroundingMetrics()
    metric.update(*_example())
    out = metric.compute()
    assert out["cIoU"].item() == pytest.approx((16 + 8 + 0 + 0 + 12) / (16 + 16 + 8 + 0 + 16))
    assert out["mIoU"].item() == pytest.approx((1 + 0.5 + 0 + 1 + 0.75) / 5)
    assert out["P@0.5"].item() == pytest.approx(4 / 5)
    assert out["P@0.7"].item() == pytest.approx(3 / 5)
    assert out["P@0.9"].item() == pytest.approx(2 / 5)


def test_batch_size_one_equals_full_batch_and_reset():
    preds, targets = _example()
    full = GroundingMetrics()
    full.update(preds, targets)
    single = GroundingMetrics()
    for p, t in zip(preds, targets, strict=True):
        single.update(p[None], t[None])
    a, b = full.compute(), single.compute()
    assert all(a[k].item() == pytest.approx(b[k].item()) for k in a)
    single.reset()
    assert single.count.item() == 0
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert all(v.item() == 0 for v in single.compute().values())


def test_one_sided_empty_is_zero():
    metric = GroundingMetrics()
    metric.update(torch.zeros(1, 4, 4, dtype=torch.bool), torch.ones(1, 4, 4, dtype=torch.bool))
    out = metric.compute()
    assert out["mIoU"].item() == 0 and out["cIoU"].item() == 0


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        GroundingMetrics().update(torch.zeros(2, 4, 4), torch.zeros(1, 4, 4))
