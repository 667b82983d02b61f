import math

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from findlit.losses.mask_losses import (
    LossWeights,
    classification_loss,
    deep_supervision,
    grounding_classification_loss,
    grounding_losses,
    mask_losses,
    segmentation_losses,
)
from findlit.losses.matcher import HungarianMatcher
from findlit.losses.points import PointSampling


def _square(size: int, y: int, x: int, side: int) -> torch.Tensor:
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[y : y + side, x : x + side] = True
    return mask


def _targets() -> list[dict[str, torch.Tensor]]:
    return [
        {
            "labels": torch.tensor([1, 0]),
            "masks": torch.stack([_square(32, 2, 2, 12), _square(32, 16, 10, 14)]),
        },
        {"labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 32, 32, dtype=torch.bool)},
    ]


def _matches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.tensor([0, 3]), torch.tensor([1, 0])), (torch.zeros(0, dtype=torch.long),) * 2]


def _perfect_logits() -> torch.Tensor:
    masks = _targets()[0]["masks"]
    logits = torch.full((2, 4, 32, 32), -20.0)
    logits[0, 0] = 20 * (2 * masks[1].float() - 1)
    logits[0, 3] = 20 * (2 * masks[0].float() - 1)
    return logits


def test_loss_weights_are_finds_defaults() -> None:
    w = LossWeights()
    assert w.segmentation() == {"ce": 2.0, "bce": 5.0, "dice": 5.0} and w.no_object == 0.1
    assert w.grounding() == {"ce": 0.4, "bce": 1.0, "dice": 1.0}
    assert w.retrieval == w.interleave_retrieval == 8.0


def test_perfect_predictions_give_zero_dice_and_small_bce() -> None:
    # a large frame: bilinear reads soften the targets on a one-pixel band only
    masks = [torch.stack([_square(256, 10, 20, 100), _square(256, 120, 100, 120)])]
    logits = torch.full((1, 3, 256, 256), -20.0)
    logits[0, 2], logits[0, 0] = 20 * (2 * masks[0].float() - 1)
    matches = [(torch.tensor([0, 2]), torch.tensor([1, 0]))]
    g = torch.Generator().manual_seed(0)
    bce, dice = mask_losses(logits, matches, masks, 4000, 3.0, 0.0, generator=g)
    assert dice.item() < 0.01 and bce.item() < 0.05
    # importance sampling puts 3/4 of the points on the boundaries, where the interpolated target is soft:
    # higher, but far below the loss of inverted predictions
    bce_imp, dice_imp = mask_losses(logits, matches, masks, 4000, generator=g)
    bce_bad, dice_bad = mask_losses(-logits, matches, masks, 4000, generator=g)
    assert dice_imp.item() < 0.2 * dice_bad.item() and bce_imp.item() < 0.2 * bce_bad.item()
    assert dice_bad.item() > 0.9


def test_mask_losses_are_normalised_by_the_number_of_masks() -> None:
    masks = [t["masks"] for t in _targets()]
    logits = torch.zeros(2, 4, 32, 32)  # BCE ln 2 everywhere
    bce, _ = mask_losses(logits, _matches(), masks, 100)
    assert bce.item() == pytest.approx(math.log(2), rel=1e-5)  # 2 masks x ln 2 / 2 masks
    bce, _ = mask_losses(logits, _matches(), masks, 100, num_masks=4.0)
    assert bce.item() == pytest.approx(math.log(2) / 2, rel=1e-5)


def test_no_targets_give_zero_losses_with_a_graph() -> None:
    logits = torch.randn(1, 3, 8, 8, requires_grad=True)
    empty = [(torch.zeros(0, dtype=torch.long),) * 2]
    bce, dice = mask_losses(logits, empty, [torch.zeros(0, 8, 8, dtype=torch.bool)], 10)
    assert bce.item() == dice.item() == 0.0
    (bce + dice).backward()
    assert logits.grad is not None and not logits.grad.any()


def test_classification_loss_by_hand_and_no_object_weight() -> None:
    class_logits = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(1))  # K = 2
    labels = [t["labels"] for t in _targets()]
    targets = torch.tensor([[0, 2, 2, 1], [2, 2, 2, 2]])  # query 0 <- target 1 (label 0), query 3 <- label 1
    per_query = -class_logits.log_softmax(-1).gather(-1, targets[..., None])[..., 0]
    for weight in (0.1, 1.0):
        w = torch.where(targets == 2, weight, 1.0)
        expected = (w * per_query).sum() / w.sum()
        got = classification_loss(class_logits, _matches(), labels, num_classes=2, no_object_weight=weight)
        assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    # confident no-object everywhere: a lower no-object weight lets the two wrong matched queries weigh more
    confident = torch.zeros(2, 4, 3)
    confident[..., 2] = 5.0
    low = classification_loss(confident, _matches(), labels, 2, 0.1)
    high = classification_loss(confident, _matches(), labels, 2, 1.0)
    assert low > high
    with pytest.raises(ValueError, match="expected 3"):
        classification_loss(class_logits, _matches(), labels, num_classes=3)


def test_deep_supervision_sums_weighted_layers() -> None:
    layers = [
        {"ce": torch.tensor(1.0), "bce": torch.tensor(2.0), "dice": torch.tensor(3.0)},
        {"ce": torch.tensor(0.5), "bce": torch.tensor(0.25), "dice": torch.tensor(0.125)},
    ]
    total, logs = deep_supervision(layers, {"ce": 2.0, "bce": 5.0, "dice": 5.0})
    assert total.item() == pytest.approx(2 + 10 + 15 + 1 + 1.25 + 0.625)
    assert logs["ce_0"].item() == 1.0 and logs["dice_1"].item() == 0.125 and logs["bce"].item() == 0.25
    with pytest.raises(KeyError, match="dice"):
        deep_supervision(layers, {"ce": 1.0, "bce": 1.0})


def _layers(requires_grad: bool = True) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(2)
    perfect = _perfect_logits() / 4
    masks = [
        (perfect + torch.randn(perfect.shape, generator=g)).requires_grad_(requires_grad) for _ in range(3)
    ]
    classes = [torch.randn(2, 4, 3, generator=g).requires_grad_(requires_grad) for _ in range(3)]
    return classes, masks


def test_segmentation_losses_over_layers_with_config_weights() -> None:
    classes, masks = _layers()
    sampling = PointSampling(num_points=500)
    weights = LossWeights(ce=1.0, bce=3.0, dice=7.0)
    total, logs = segmentation_losses(
        classes, masks, _targets(), HungarianMatcher(num_points=500), 2, weights, sampling
    )
    expected = sum(1.0 * logs[f"ce_{i}"] + 3.0 * logs[f"bce_{i}"] + 7.0 * logs[f"dice_{i}"] for i in range(3))
    assert total.item() == pytest.approx(float(expected), rel=1e-5)
    total.backward()
    # every layer's predictions get gradients; unmatched query masks (2 of image 0, all of image 1) none
    for cls, msk in zip(classes, masks, strict=True):
        assert cls.grad is not None and cls.grad.abs().sum() > 0
        assert msk.grad is not None and msk.grad[0].flatten(1).abs().sum(1).gt(0).sum() == 2
        assert not msk.grad[1].any()


def test_gradients_do_not_reach_the_targets() -> None:
    logits = _perfect_logits().requires_grad_()
    soft_targets = [t["masks"].float().requires_grad_() for t in _targets()]
    bce, dice = mask_losses(logits, _matches(), soft_targets, 200)
    (bce + dice).backward()
    assert logits.grad is not None
    assert all(t.grad is None or not t.grad.any() for t in soft_targets)


def test_bf16_autocast_runs() -> None:
    classes, masks = _layers()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, _ = segmentation_losses(
            [c.bfloat16() for c in classes],
            [m.bfloat16() for m in masks],
            _targets(),
            HungarianMatcher(num_points=300),
            2,
            sampling=PointSampling(num_points=300),
        )
    assert total.dtype == torch.float32 and torch.isfinite(total)
    total.backward()
    assert masks[0].grad is not None and torch.isfinite(masks[0].grad).all()


def test_grounding_classification_loss_by_hand() -> None:
    similarity = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(3))
    valid = torch.tensor([[True, False, True], [False, True, False]])
    matches = [(torch.tensor([4, 1]), torch.tensor([0, 1])), (torch.tensor([2]), torch.tensor([0]))]
    # image 0: valid sentences are columns 0, 2; image 1: column 1
    rows = torch.stack([similarity[0, :, 0], similarity[0, :, 2], similarity[1, :, 1]])
    expected = F.cross_entropy(rows, torch.tensor([4, 1, 2]))
    assert grounding_classification_loss(similarity, matches, valid).item() == pytest.approx(expected.item())


def test_grounding_losses_run_and_train_the_similarity() -> None:
    _, masks = _layers()
    similarity = [torch.randn(2, 4, 3, requires_grad=True) for _ in masks]
    valid = torch.tensor([[True, True, False], [False, False, False]])
    targets = [{"masks": t["masks"]} for t in _targets()]
    total, logs = grounding_losses(
        similarity,
        masks,
        valid,
        targets,
        HungarianMatcher(num_points=300),
        sampling=PointSampling(num_points=300),
    )
    expected = sum(0.4 * logs[f"ce_{i}"] + logs[f"bce_{i}"] + logs[f"dice_{i}"] for i in range(3))
    assert total.item() == pytest.approx(float(expected), rel=1e-5)
    total.backward()
    assert all(s.grad is not None and s.grad[0, :, :2].abs().sum() > 0 for s in similarity)
    assert all(s.grad is not None and not s.grad[:, :, 2].any() for s in similarity)
