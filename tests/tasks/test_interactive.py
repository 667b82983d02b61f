"""InteractiveTask on a tiny FIND interface: strokes, click rounds, losses, the click evaluation, learning."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import torch
from torch import Tensor

from findlit.data.collate import Batch
from findlit.interactive.strokes import StrokeSampling
from findlit.interface.find import FINDInterface
from findlit.losses import LossWeights
from findlit.metrics import InteractiveMetrics
from findlit.tasks.base import TaskContext
from findlit.tasks.interactive import CURVES, MEMORIES, SEGMENT, SPATIAL_QUERIES, TARGETS, InteractiveTask
from tests.tasks.test_grounding import (
    CHANNELS,
    FULL,
    SMALL,
    STRIDES,
    fake_encode_text,
    make_batch,
    tiny_interface,
)


def interface(**kwargs: Any) -> FINDInterface:
    return tiny_interface(visual_prompts=True, max_visual_points=32, **kwargs)


def context(model: FINDInterface) -> TaskContext:
    return TaskContext(interface=model, encode_text=fake_encode_text)


def objects(size: tuple[int, int], seed: int) -> Tensor:
    """Three disjoint rectangles (top band, left and right blocks) of an image of ``size``."""
    h, w = size
    generator = torch.Generator().manual_seed(seed)
    masks = torch.zeros(3, h, w, dtype=torch.bool)
    cut = int(torch.randint(h // 4, h // 2, (1,), generator=generator))
    middle = int(torch.randint(w // 3, 2 * w // 3, (1,), generator=generator))
    masks[0, :cut] = True
    masks[1, cut:, :middle] = True
    masks[2, cut:, middle:] = True
    return masks


def interactive_batch(sizes: Sequence[tuple[int, int]], seed: int = 0) -> Batch:
    targets = []
    for i, size in enumerate(sizes):
        masks = objects(size, seed * 100 + i)
        targets.append(
            {
                "masks": masks,
                "labels": torch.arange(3),
                "is_thing": torch.ones(3, dtype=torch.bool),
                "ignore_mask": torch.zeros(size, dtype=torch.bool),
                "seed": seed * 100 + i,
            }
        )
    return make_batch("interactive", sizes, targets)


def object_features(batch: Batch, noise: float = 0.3, seed: int = 0) -> dict[str, Tensor]:
    """Each object's pixels share a random vector (plus noise), pooled to every level's stride.

    An object is then something the features tell apart, as a real encoder's would: a click on it
    says which vector to look for.
    """
    generator = torch.Generator().manual_seed(seed)
    padding = batch["padding_mask"]
    out = {}
    for level, channels in CHANNELS.items():
        colours = torch.randn(3, channels, generator=generator)
        per_pixel = torch.zeros(padding.shape[0], channels, *padding.shape[-2:])
        for b, target in enumerate(batch["targets"]):
            for k, mask in enumerate(target["masks"]):
                per_pixel[b][:, mask] = colours[k][:, None]
        stride = STRIDES[level]
        pooled = torch.nn.functional.avg_pool2d(per_pixel, stride)
        out[level] = pooled + noise * torch.randn(pooled.shape, generator=generator)
    return out


def test_strokes_are_seeded_per_image_and_the_prompts_instantiate_finds_types() -> None:
    model = interface()
    task = InteractiveTask(num_proposals=8, num_points=64)
    batch = interactive_batch([FULL, SMALL])
    first = task.prompts(batch, context(model))
    again = task.prompts(batch, context(model))
    visual = first.visual["tokens.vision.spatial"]
    assert torch.equal(visual.positive, again.visual["tokens.vision.spatial"].positive)
    assert visual.image.tolist() == [0, 1] and visual.positive.flatten(1).any(dim=1).all()
    # every stroke lies on one of its image's objects
    for b, target in enumerate(batch["targets"]):
        on = [bool((visual.positive[b] & ~mask).any()) for mask in target["masks"]]
        assert False in on or StrokeSampling().kinds  # a box may leave its object; others do not
    assert first.learned == {SEGMENT: 8}
    assert first.per_prompt == {SPATIAL_QUERIES: "tokens.vision.spatial"}


def test_training_rounds_add_memories_and_the_losses_reach_them() -> None:
    model = interface()
    task = InteractiveTask(num_proposals=8, num_points=64, max_rounds=3)
    model.train()
    task.train()
    ctx = context(model)
    used_memories = False
    for seed in range(6):  # the number of rounds is drawn per batch: some draw at least one
        batch = interactive_batch([FULL, SMALL], seed=seed)
        output = task.run(batch, object_features(batch), ctx)
        total, logs = task.losses(output, batch, ctx)
        assert torch.isfinite(total) and {"ce", "bce", "dice"} <= set(logs)
        assert [t.shape[0] for t in output.extras[TARGETS]] == [1, 1]
        if MEMORIES in output.last:
            used_memories = True
            model.zero_grad()
            total.backward()
            memory = model.embeddings["memories__vision__spatial"]
            assert memory.grad is not None and float(memory.grad.abs().sum()) > 0
    assert used_memories


def test_losses_weigh_the_spatial_terms() -> None:
    model = interface().eval()
    batch = interactive_batch([FULL])
    ctx = context(model)
    features = object_features(batch)
    outputs = []
    for weights in ({"spatial_ce": 0.4}, {"spatial_ce": 0.8}):
        task = InteractiveTask(num_proposals=8, num_points=64, max_rounds=0, weights=LossWeights(**weights))
        task.eval()
        with torch.no_grad():
            output = task.run(batch, features, ctx)
            outputs.append(task.losses(output, batch, ctx))
    (low, low_logs), (high, _) = outputs
    ce_every_layer = sum(float(low_logs[f"ce_{layer}"]) for layer in range(3))  # 2 layers + the first
    assert float(high - low) == pytest.approx(0.4 * ce_every_layer, rel=1e-5)


def test_evaluation_clicks_on_every_object_and_feeds_the_metrics() -> None:
    model = interface().eval()
    task = InteractiveTask(num_proposals=8, num_points=64, max_clicks=6).eval()
    batch = interactive_batch([FULL, SMALL])
    ctx = context(model)
    with torch.no_grad():
        output = task.run(batch, object_features(batch), ctx)
        predictions = task.predict(output, batch, ctx)
    curves = output.extras[CURVES]
    assert [c.shape for c, _ in curves] == [(3, 6), (3, 6)]
    for prediction, (h, w) in zip(predictions, [FULL, SMALL], strict=True):
        assert prediction["masks"].shape == (1, h, w)
        ious = prediction["ious"]
        assert not ious[:, :5].isnan().any() and ((ious.nan_to_num(0) >= 0) & (ious.nan_to_num(0) <= 1)).all()
        assert prediction["box_ious"].shape == (3,)
    metrics = task.build_metrics(None)  # type: ignore[arg-type]
    assert metrics is not None and isinstance(metrics["interactive"], InteractiveMetrics)  # type: ignore[index]
    task.update_metrics(metrics, batch, predictions, ctx)
    values = metrics.compute()
    assert int(metrics["interactive"].objects) == 6  # type: ignore[index]
    assert 1 <= float(values["NoC@85"]) <= 6 and 0 <= float(values["mIoU@1"]) <= 1


def test_evaluation_is_deterministic_and_caps_objects_per_image() -> None:
    model = interface().eval()
    task = InteractiveTask(num_proposals=8, num_points=64, max_clicks=5, eval_objects=2).eval()
    batch = interactive_batch([FULL])
    ctx = context(model)
    with torch.no_grad():
        first = task.run(batch, object_features(batch), ctx).extras[CURVES][0][0]
        again = task.run(batch, object_features(batch), ctx).extras[CURVES][0][0]
    assert first.shape == (2, 5)
    assert torch.equal(first.nan_to_num(-1), again.nan_to_num(-1))
