import itertools

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from findlit.losses.matcher import HungarianMatcher, match_by_similarity


def _blobs(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """n random rectangles, bool[n, size, size], each at least a quarter of the side."""
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    for i in range(n):
        y0, x0 = torch.randint(0, size // 2, (2,), generator=generator).tolist()
        h, w = torch.randint(size // 4, size // 2, (2,), generator=generator).tolist()
        masks[i, y0 : y0 + h, x0 : x0 + w] = True
    return masks


def _perturbed_predictions(
    masks: torch.Tensor, num_queries: int, perm: list[int], stride: int, generator: torch.Generator
) -> torch.Tensor:
    """Mask logits [Q, H/stride, W/stride]: query perm[j] predicts target j (noisy), other queries noise."""
    size = masks.shape[-1] // stride
    logits = torch.randn(num_queries, size, size, generator=generator) - 4.0
    low = F.avg_pool2d(masks[:, None].float(), stride)[:, 0]
    for j, q in enumerate(perm):
        logits[q] = 8 * (2 * low[j] - 1) + torch.randn(size, size, generator=generator)
    return logits


def test_recovers_a_permutation_from_masks_at_another_resolution() -> None:
    g = torch.Generator().manual_seed(0)
    masks = _blobs(4, 64, g)
    perm = [5, 0, 3, 1]
    logits = _perturbed_predictions(masks, 6, perm, stride=4, generator=g)  # predictions at 16x16
    matcher = HungarianMatcher(num_points=2000)
    ((query, target),) = matcher(
        None, logits[None], [{"labels": torch.zeros(4, dtype=torch.long), "masks": masks}]
    )
    assert query.dtype == target.dtype == torch.int64
    assert dict(zip(target.tolist(), query.tolist(), strict=True)) == dict(enumerate(perm))
    assert query.tolist() == sorted(query.tolist())


def test_class_cost_alone_decides() -> None:
    labels = torch.tensor([2, 0, 1])
    class_logits = torch.zeros(1, 5, 4)  # 3 classes + no object
    for query, label in [(4, 2), (1, 0), (3, 1)]:
        class_logits[0, query, label] = 10.0
    masks = torch.ones(3, 8, 8, dtype=torch.bool)
    matcher = HungarianMatcher(cost_class=1.0, cost_mask=0.0, cost_dice=0.0, num_points=16)
    ((query, target),) = matcher(class_logits, torch.zeros(1, 5, 8, 8), [{"labels": labels, "masks": masks}])
    assert dict(zip(target.tolist(), query.tolist(), strict=True)) == {0: 4, 1: 1, 2: 3}


def test_mask_cost_alone_ignores_contradicting_classes() -> None:
    g = torch.Generator().manual_seed(1)
    masks = _blobs(3, 32, g)
    perm = [2, 0, 1]
    logits = _perturbed_predictions(masks, 4, perm, stride=1, generator=g)
    class_logits = torch.zeros(1, 4, 3)
    class_logits[0, :, 0] = torch.tensor([10.0, 0.0, 0.0, 0.0])  # pushes every target to query 0 by class
    labels = torch.zeros(3, dtype=torch.long)
    matcher = HungarianMatcher(cost_class=0.0, num_points=1000)
    ((query, target),) = matcher(class_logits, logits[None], [{"labels": labels, "masks": masks}])
    assert dict(zip(target.tolist(), query.tolist(), strict=True)) == dict(enumerate(perm))


def test_empty_targets_and_batches_with_different_counts() -> None:
    g = torch.Generator().manual_seed(2)
    masks_a, masks_c = _blobs(2, 32, g), _blobs(5, 32, g)
    perm_a, perm_c = [3, 1], [0, 6, 2, 5, 4]
    logits = torch.stack(
        [
            _perturbed_predictions(masks_a, 7, perm_a, 2, g),
            torch.randn(7, 16, 16, generator=g),
            _perturbed_predictions(masks_c, 7, perm_c, 2, g),
        ]
    )
    targets = [
        {"labels": torch.tensor([1, 2]), "masks": masks_a},
        {"labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 32, 32, dtype=torch.bool)},
        {"labels": torch.tensor([0, 0, 1, 1, 2]), "masks": masks_c},
    ]
    class_logits = torch.randn(3, 7, 4, generator=g)
    matches = HungarianMatcher(num_points=1000)(class_logits, logits, targets)
    assert [len(q) for q, _ in matches] == [2, 0, 5]
    assert matches[1][0].dtype == torch.int64
    for (query, target), perm in zip([matches[0], matches[2]], [perm_a, perm_c], strict=True):
        assert dict(zip(target.tolist(), query.tolist(), strict=True)) == dict(enumerate(perm))


def test_more_targets_than_queries_matches_every_query() -> None:
    masks = _blobs(5, 16, torch.Generator().manual_seed(3))
    ((query, target),) = HungarianMatcher(num_points=100)(
        None, torch.randn(1, 3, 16, 16), [{"labels": torch.zeros(5, dtype=torch.long), "masks": masks}]
    )
    assert sorted(query.tolist()) == [0, 1, 2] and len(set(target.tolist())) == 3


def _independent_cost(
    class_logits: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    masks: torch.Tensor,
    coords: torch.Tensor,
) -> torch.Tensor:
    """The matching cost per (query, target) pair, one pair at a time."""
    grid = (2 * coords - 1)[:, :, None]  # [1, P, 1, 2]
    pred = F.grid_sample(logits[None], grid, align_corners=False)[0, :, :, 0]
    tgt = F.grid_sample(masks[None].float(), grid, align_corners=False)[0, :, :, 0]
    prob = class_logits.softmax(-1)
    cost = torch.empty(logits.shape[0], masks.shape[0])
    for q in range(logits.shape[0]):
        for t in range(masks.shape[0]):
            bce = F.binary_cross_entropy_with_logits(pred[q], tgt[t])
            p = pred[q].sigmoid()
            dice = 1 - (2 * (p * tgt[t]).sum() + 1) / (p.sum() + tgt[t].sum() + 1)
            cost[q, t] = 2.0 * -prob[q, labels[t]] + 5.0 * bce + 5.0 * dice
    return cost


@pytest.mark.parametrize("seed", range(5))
def test_equals_brute_force_on_tiny_sizes(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    num_queries, num_targets, points = 5, 3, 64
    class_logits = torch.randn(1, num_queries, 4, generator=g)
    logits = torch.randn(1, num_queries, 8, 8, generator=g)
    masks = torch.rand(num_targets, 8, 8, generator=g) > 0.5
    labels = torch.randint(0, 3, (num_targets,), generator=g)
    matcher = HungarianMatcher(num_points=points)
    ((query, target),) = matcher(
        class_logits,
        logits,
        [{"labels": labels, "masks": masks}],
        generator=torch.Generator().manual_seed(99),
    )
    # the matcher draws one [1, P, 2] uniform set per image from the generator, shared by both sides
    coords = torch.rand(1, points, 2, generator=torch.Generator().manual_seed(99))
    cost = _independent_cost(class_logits[0], logits[0], labels, masks, coords)
    best = min(
        itertools.permutations(range(num_queries), num_targets),
        key=lambda qs: sum(cost[q, t].item() for t, q in enumerate(qs)),
    )
    assert dict(zip(target.tolist(), query.tolist(), strict=True)) == dict(enumerate(best))


def test_bf16_autocast_and_no_grad() -> None:
    g = torch.Generator().manual_seed(4)
    masks = _blobs(3, 32, g)
    logits = _perturbed_predictions(masks, 5, [4, 2, 0], 2, g)[None].requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ((query, target),) = HungarianMatcher(num_points=500)(
            None, logits.bfloat16(), [{"labels": torch.zeros(3, dtype=torch.long), "masks": masks}]
        )
    assert dict(zip(target.tolist(), query.tolist(), strict=True)) == {0: 4, 1: 2, 2: 0}


def test_grounding_matching_follows_similarity_and_masks() -> None:
    g = torch.Generator().manual_seed(5)
    masks_0 = _blobs(2, 32, g)
    masks_1 = _blobs(3, 32, g)
    num_queries = 6
    logits = torch.stack(
        [_perturbed_predictions(masks_0, num_queries, [1, 4], 1, g), torch.zeros(num_queries, 32, 32)]
    )
    similarity = torch.zeros(2, num_queries, 4)
    # image 1: masks carry no information; the similarity points sentences (valid cols 0, 2, 3) at queries
    similarity[1, 5, 0] = similarity[1, 0, 2] = similarity[1, 3, 3] = 10.0
    similarity[1, :, 1] = 100.0  # a padding sentence: must be ignored
    valid = torch.tensor([[True, True, False, False], [True, False, True, True]])
    targets = [{"masks": masks_0}, {"masks": masks_1}]
    matches = match_by_similarity(similarity, valid, logits, targets, num_points=1000)
    assert matches[0][0].tolist() == [1, 4] and matches[0][1].tolist() == [0, 1]
    assert matches[1][0].tolist() == [5, 0, 3] and matches[1][1].tolist() == [0, 1, 2]
    via_matcher = HungarianMatcher(num_points=1000).match_by_similarity(similarity, valid, logits, targets)
    assert [q.tolist() for q, _ in via_matcher] == [[1, 4], [5, 0, 3]]


def test_grounding_matching_checks_counts_and_handles_no_sentence() -> None:
    similarity = torch.randn(1, 3, 2)
    logits = torch.randn(1, 3, 8, 8)
    none = torch.zeros(1, 2, dtype=torch.bool)
    ((query, _),) = match_by_similarity(
        similarity, none, logits, [{"masks": torch.zeros(0, 8, 8, dtype=torch.bool)}]
    )
    assert query.numel() == 0
    with pytest.raises(ValueError, match="2 target masks for 1 sentences"):
        match_by_similarity(
            similarity,
            torch.tensor([[True, False]]),
            logits,
            [{"masks": torch.zeros(2, 8, 8, dtype=torch.bool)}],
        )
