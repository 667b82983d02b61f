"""InterleaveTask on the tiny interface of test_grounding: several phrases per entity sentence."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import torch

from findlit.data.collate import Batch
from findlit.tasks.interleave import InterleaveTask, phrases_of
from tests.tasks.test_grounding import (
    FULL,
    SMALL,
    context,
    features,
    grads_reach,
    make_batch,
    random_masks,
    tiny_interface,
)

SENTENCE = "a red cup next to a blue plate"
SPANS = [(0, 9), (18, 30)]  # "a red cup", "a blue plate"


def interleave_batch(phrases: Sequence[int], sizes: Sequence[tuple[int, int]] | None = None) -> Batch:
    """Per image, ``phrases[i]`` phrases: pairs of spans from SENTENCE, then a single-phrase sentence."""
    sizes = list(sizes or [FULL] * len(phrases))
    targets = []
    for i, (count, size) in enumerate(zip(phrases, sizes, strict=True)):
        entities: list[dict[str, Any]] = []
        k = 0
        while k < count:
            if count - k >= 2:
                entities.append(
                    {"sentence": SENTENCE, "spans": SPANS, "targets": [k, k + 1], "references": [None, None]}
                )
                k += 2
            else:
                entities.append(
                    {"sentence": "the dog", "spans": [(0, 7)], "targets": [k], "references": [None]}
                )
                k += 1
        targets.append({"masks": random_masks(count, size, seed=10 + i), "entities": entities})
    return make_batch("interleave", sizes, targets)


def test_phrases_of() -> None:
    batch = interleave_batch([3])
    assert phrases_of(batch["targets"][0]) == (["a red cup", "a blue plate", "the dog"], [0, 1, 2])


def test_prompts_shapes() -> None:
    interface = tiny_interface()
    task = InterleaveTask(num_proposals=8, num_points=64)
    batch = interleave_batch([2, 3])
    prompts = task.prompts(batch, context(interface))
    tokens = prompts.tokens["tokens.interleave.legend"]
    assert tokens.image is not None and tokens.image.tolist() == [0, 0, 1, 1, 1]
    assert prompts.learned == {
        "proposals.interleave.entity": 8,
        "queries.interleave.legend": 1,
        "queries.vision.image": 1,
    }
    assert prompts.per_prompt == {"queries.interleave.entity": "tokens.interleave.legend"}
    output = interface(features(batch), prompts, batch["padding_mask"])
    assert output.last["queries.interleave.entity"]["valid"].tolist() == [[True, True, False], [True] * 3]
    assert output.last["proposals.interleave.entity"]["mask_logits"].shape == (2, 8, 16, 24)


def test_visual_prompt_p_validated() -> None:
    with pytest.raises(ValueError, match="visual_prompt_p"):
        InterleaveTask(visual_prompt_p=1.5)


@pytest.mark.parametrize("counts", [[2], [2, 3, 4]])
@pytest.mark.parametrize("retrieval", [True, False])
def test_losses_finite_and_backpropagate(counts: list[int], retrieval: bool) -> None:
    interface = tiny_interface()
    task = InterleaveTask(num_proposals=8, num_points=64, retrieval=retrieval)
    batch = interleave_batch(counts)
    ctx = context(interface)
    output = interface(features(batch), task.prompts(batch, ctx), batch["padding_mask"])
    total, logs = task.losses(output, batch, ctx)
    assert torch.isfinite(total)
    assert {"ce", "bce", "dice"} <= set(logs)
    assert ("interleave_retrieval" in logs) == retrieval
    total.backward()
    grads_reach(interface)
    if retrieval:
        assert interface.embeddings["queries__vision__image"].grad is not None


def test_predict_crops_to_image_sizes() -> None:
    interface = tiny_interface()
    task = InterleaveTask(num_proposals=8, num_points=64)
    batch = interleave_batch([2, 3], sizes=[FULL, SMALL])
    ctx = context(interface)
    with torch.no_grad():
        predictions = task.predict(
            interface(features(batch), task.prompts(batch, ctx), batch["padding_mask"]), batch, ctx
        )
    for prediction, count, size in zip(predictions, [2, 3], [FULL, SMALL], strict=True):
        assert prediction["masks"].shape == (count, *size) and prediction["masks"].dtype == torch.bool
        assert prediction["scores"].shape == (count,)
        assert len(prediction["phrases"]) == count


@pytest.mark.parametrize("retrieval", [True, False])
def test_predict_returns_retrieval_embeddings(retrieval: bool) -> None:
    interface = tiny_interface()
    task = InterleaveTask(num_proposals=8, num_points=64, retrieval=retrieval)
    batch = interleave_batch([2, 1, 3])
    ctx = context(interface)
    with torch.no_grad():
        output = interface(features(batch), task.prompts(batch, ctx), batch["padding_mask"])
        predictions = task.predict(output, batch, ctx)
    if not retrieval:
        assert all("legend_embedding" not in p and "image_embedding" not in p for p in predictions)
        return
    legends = torch.stack([p["legend_embedding"] for p in predictions])
    images = torch.stack([p["image_embedding"] for p in predictions])
    assert legends.shape == images.shape == (3, output.last["queries.vision.image"]["embeddings"].shape[-1])
    torch.testing.assert_close(legends.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(images.norm(dim=-1), torch.ones(3))
    # the legend and image queries of the interface output, per image, in batch order
    torch.testing.assert_close(
        legends, torch.nn.functional.normalize(output.last["queries.interleave.legend"]["embeddings"][:, 0])
    )
    torch.testing.assert_close(
        images, torch.nn.functional.normalize(output.last["queries.vision.image"]["embeddings"][:, 0])
    )
    assert not torch.allclose(legends[0], legends[2])  # one legend per image, not a shared query
