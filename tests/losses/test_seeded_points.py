"""Per-image seeded points: an image's matching and losses do not depend on the images beside it.

This is what lets N ranks train like one process on the N-fold batch: the losses of a batch are
the count-weighted combination of the losses of its images taken alone (and, under DDP, the
normalisers averaged over ranks make the averaged gradient that of the whole batch).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from findlit.losses import (
    HungarianMatcher,
    PointSampling,
    classification_weight_sum,
    grounding_losses,
    image_generators,
    mask_losses,
    match_by_similarity,
    segmentation_losses,
)
from tests.losses.ddp_mask_losses import build, grads, losses
from tests.losses.two_ranks import run_two_rank_script

SIZE = 16
QUERIES = 5
CLASSES = 3


def _random_masks(count: int, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(count, SIZE, SIZE, generator=generator) > 0.6


def _batch(counts: list[int], layers: int = 2, seed: int = 0) -> tuple[list[torch.Tensor], ...]:
    """Per layer class logits [B,Q,K+1] and mask logits [B,Q,S,S]; per image labels and masks."""
    g = torch.Generator().manual_seed(seed)
    classes = [torch.randn(len(counts), QUERIES, CLASSES + 1, generator=g) for _ in range(layers)]
    masks = [torch.randn(len(counts), QUERIES, SIZE, SIZE, generator=g) for _ in range(layers)]
    labels = [torch.randint(0, CLASSES, (n,), generator=g) for n in counts]
    targets = [_random_masks(n, g) for n in counts]
    return classes, masks, labels, targets


def test_image_generators_follow_seed_and_stream() -> None:
    def draw(seed: int, stream: int) -> torch.Tensor:
        [generator] = image_generators([seed], stream, torch.device("cpu"))
        return torch.rand(8, generator=generator)

    assert torch.equal(draw(5, 0), draw(5, 0))
    assert not torch.equal(draw(5, 0), draw(6, 0))
    assert not torch.equal(draw(5, 0), draw(5, 1))  # decoder layers draw different points
    # not the sample's augmentation stream, which is seeded by the seed itself
    assert not torch.equal(draw(5, 0), torch.rand(8, generator=torch.Generator().manual_seed(5)))
    a, b = image_generators([3, 3], 0, torch.device("cpu"))
    assert a is not b and torch.equal(torch.rand(4, generator=a), torch.rand(4, generator=b))


def test_matching_of_an_image_does_not_depend_on_its_batch() -> None:
    # few points: the assignment depends on where they fall
    matcher = HungarianMatcher(num_points=3)
    changed = 0
    for trial in range(6):
        classes, masks, labels, targets = _batch([4, 3], layers=1, seed=trial)
        batch_targets = [{"labels": lab, "masks": m} for lab, m in zip(labels, targets, strict=True)]
        seeds = [100 + trial, 200 + trial]
        together = matcher(
            classes[0], masks[0], batch_targets, image_generators(seeds, 0, torch.device("cpu"))
        )
        for b in range(2):
            alone = matcher(
                classes[0][b : b + 1],
                masks[0][b : b + 1],
                batch_targets[b : b + 1],
                image_generators(seeds[b : b + 1], 0, torch.device("cpu")),
            )
            assert all(torch.equal(x, y) for x, y in zip(alone[0], together[b], strict=True))
        other = matcher(classes[0], masks[0], batch_targets, image_generators([7, 8], 0, torch.device("cpu")))
        changed += any(not torch.equal(x[0], y[0]) for x, y in zip(other, together, strict=True))
    assert changed > 0  # the points do matter, so the equality above is not vacuous


def test_grounding_matching_of_an_image_does_not_depend_on_its_batch() -> None:
    g = torch.Generator().manual_seed(4)
    similarity = torch.randn(2, QUERIES, 3, generator=g)
    valid = torch.tensor([[True, True, True], [True, False, False]])
    logits = torch.randn(2, QUERIES, SIZE, SIZE, generator=g)
    targets = [{"masks": _random_masks(3, g)}, {"masks": _random_masks(1, g)}]
    seeds = [31, 32]
    options = {"num_points": 4, "cost_class": 0.1}
    together = match_by_similarity(
        similarity, valid, logits, targets, generator=image_generators(seeds, 0, logits.device), **options
    )
    alone = match_by_similarity(
        similarity[1:, :, :1],
        valid[1:, :1],
        logits[1:],
        targets[1:],
        generator=image_generators(seeds[1:], 0, logits.device),
        **options,
    )
    assert all(torch.equal(x, y) for x, y in zip(alone[0], together[1], strict=True))


def test_mask_losses_of_a_batch_are_the_sum_of_its_images() -> None:
    _, masks, _, targets = _batch([3, 2], layers=1)
    logits = masks[0]
    matches = [
        (torch.tensor([0, 2, 4]), torch.tensor([1, 0, 2])),
        (torch.tensor([1, 3]), torch.tensor([0, 1])),
    ]
    seeds = [17, 18]

    def terms(rows: slice, seeds: list[int]) -> torch.Tensor:
        generators = image_generators(seeds, 0, logits.device)
        bce, dice = mask_losses(
            logits[rows], matches[rows], targets[rows], 40, num_masks=1.0, generator=generators
        )
        return torch.stack([bce, dice])

    together = terms(slice(0, 2), seeds)
    separately = terms(slice(0, 1), seeds[:1]) + terms(slice(1, 2), seeds[1:])
    assert torch.allclose(together, separately, rtol=1e-6, atol=0)
    assert not torch.allclose(terms(slice(0, 1), [19]), terms(slice(0, 1), seeds[:1]))
    # one generator shared by the batch: the second image's points follow the first's draws
    shared = mask_losses(
        logits, matches, targets, 40, num_masks=1.0, generator=torch.Generator().manual_seed(0)
    )
    first = mask_losses(
        logits[:1], matches[:1], targets[:1], 40, num_masks=1.0, generator=torch.Generator().manual_seed(0)
    )
    second = mask_losses(
        logits[1:], matches[1:], targets[1:], 40, num_masks=1.0, generator=torch.Generator().manual_seed(0)
    )
    assert not torch.allclose(torch.stack(shared), torch.stack(first) + torch.stack(second))
    with pytest.raises(ValueError, match="1 generators for a batch of 2"):
        mask_losses(logits, matches, targets, 40, generator=image_generators([1], 0, logits.device))


def test_segmentation_losses_combine_the_images_losses_by_their_counts() -> None:
    counts = [4, 1]
    classes, masks, labels, targets = _batch(counts, layers=3)
    batch_targets = [{"labels": lab, "masks": m} for lab, m in zip(labels, targets, strict=True)]
    seeds = [2**62 + 5, 77]  # sample seeds are 63-bit
    matcher, sampling = HungarianMatcher(num_points=20), PointSampling(num_points=20)

    def logs(rows: slice) -> dict[str, torch.Tensor]:
        _, terms = segmentation_losses(
            [c[rows] for c in classes],
            [m[rows] for m in masks],
            batch_targets[rows],
            matcher,
            CLASSES,
            sampling=sampling,
            seeds=seeds[rows],
        )
        return terms

    together, first, second = logs(slice(0, 2)), logs(slice(0, 1)), logs(slice(1, 2))
    weights = [classification_weight_sum(QUERIES, [n]) for n in counts]
    assert classification_weight_sum(QUERIES, counts) == pytest.approx(sum(weights))
    for layer in range(3):
        for term, (a, b) in {"bce": counts, "dice": counts, "ce": weights}.items():
            key = f"{term}_{layer}"
            expected = (a * first[key] + b * second[key]) / (a + b)
            assert together[key].item() == pytest.approx(expected.item(), rel=1e-5), key
    # the layers draw different points: same predictions in two layers, different mask terms
    same = [masks[0], masks[0]]
    _, terms = segmentation_losses(
        [classes[0], classes[0]], same, batch_targets, matcher, CLASSES, sampling=sampling, seeds=seeds
    )
    assert terms["bce_0"].item() != terms["bce_1"].item()
    with pytest.raises(ValueError, match="not both"):
        segmentation_losses(
            classes, masks, batch_targets, matcher, CLASSES, generator=torch.Generator(), seeds=seeds
        )


def test_grounding_losses_combine_the_images_losses_by_their_counts() -> None:
    counts = [3, 1]
    _, masks, _, targets = _batch(counts, layers=2, seed=3)
    g = torch.Generator().manual_seed(9)
    similarity = [torch.randn(2, QUERIES, 3, generator=g) for _ in masks]
    valid = torch.tensor([[True, True, True], [True, False, False]])
    seeds = [41, 42]
    matcher, sampling = HungarianMatcher(num_points=20), PointSampling(num_points=20)

    def logs(rows: slice, sentences: int) -> dict[str, torch.Tensor]:
        _, terms = grounding_losses(
            [s[rows, :, :sentences] for s in similarity],
            [m[rows] for m in masks],
            valid[rows, :sentences],
            [{"masks": t} for t in targets[rows]],
            matcher,
            sampling=sampling,
            seeds=seeds[rows],
        )
        return terms

    together, first, second = logs(slice(0, 2), 3), logs(slice(0, 1), 3), logs(slice(1, 2), 1)
    for layer in range(2):
        for term in ("ce", "bce", "dice"):
            key = f"{term}_{layer}"
            expected = (3 * first[key] + 1 * second[key]) / 4
            assert together[key].item() == pytest.approx(expected.item(), rel=1e-5), key


@pytest.mark.slow
def test_ddp_gradients_of_the_mask_losses_equal_one_process(tmp_path: Path) -> None:
    ddp = run_two_rank_script("ddp_mask_losses.py", tmp_path / "grads.pt")

    built = build()
    model = built[0]
    losses(model, slice(0, 2), built).backward()
    reference = grads(model)
    assert reference.keys() == ddp.keys() == {"masks", "classes", "similarity"}
    for name, expected in reference.items():
        assert expected.abs().max() > 0, name
        assert torch.allclose(ddp[name], expected, rtol=0, atol=1e-6), name

    # per-rank normalisers (each rank alone, as without a process group), averaged as DDP would:
    # the ranks' unequal counts make that another gradient
    naive_model = build()[0]
    for rank in range(2):
        (losses(naive_model, slice(rank, rank + 1), built) / 2).backward()
    naive = grads(naive_model)
    assert max(float((naive[n] - reference[n]).abs().max()) for n in reference) > 1e-3
