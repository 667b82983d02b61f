"""InterleaveTask on the tiny interface of test_grounding: several phrases per entity sentence."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from findlit.data.collate import Batch
from findlit.data.sample import ReferenceImage
from findlit.interface.find import FINDInterface
from findlit.tasks.base import EvaluatedDataset, TaskContext, Vocabulary
from findlit.tasks.interleave import VISUAL_LEGEND, InterleaveTask, phrases_of
from tests.tasks.test_grounding import (
    CHANNELS,
    FULL,
    SMALL,
    STRIDES,
    context,
    fake_encode_text,
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
    task = InterleaveTask(num_proposals=8, num_points=64, visual_prompt_p=0.0)
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
    task = InterleaveTask(num_proposals=8, num_points=64, retrieval=retrieval, visual_prompt_p=0.0)
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
    task = InterleaveTask(num_proposals=8, num_points=64, visual_prompt_p=0.0)
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
    task = InterleaveTask(num_proposals=8, num_points=64, retrieval=retrieval, visual_prompt_p=0.0)
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


# -- visual entities -----------------------------------------------------------------------------------

LEGEND = "tokens.interleave.legend"
ENTITY_VISUAL = "tokens.vision.spatial_"


def visual_task(p: float = 1.0, retrieval: bool = True) -> InterleaveTask:
    return InterleaveTask(num_proposals=8, num_points=64, visual_prompt_p=p, retrieval=retrieval)


def image_features(batch: Batch) -> dict[str, Tensor]:
    """Features computed from a batch's pixels (a fixed random 1x1 projection of pooled RGB)."""
    images = batch["images"].float() / 255
    generator = torch.Generator().manual_seed(0)
    out = {}
    for level, channels in CHANNELS.items():
        projection = torch.randn(channels, 3, generator=generator)
        pooled = F.avg_pool2d(images, STRIDES[level])
        out[level] = torch.einsum("cd,bdhw->bchw", projection, pooled)
    return out


def test_visual_entities_are_the_placeholder_plus_strokes_on_their_own_segments() -> None:
    interface = tiny_interface(visual_prompts=True)
    task = visual_task(p=1.0)
    batch = interleave_batch([2, 3])
    ctx = context(interface)
    prompts = task.prompts(batch, ctx)
    tokens = prompts.tokens[LEGEND]
    assert tokens.stands_for_visual is not None and tokens.stands_for_visual.tolist() == [True] * 5
    # every legend prompt is FIND's placeholder text, encoded as any phrase
    placeholder = ctx.encode_text(["[INTERACTIVE]"])
    torch.testing.assert_close(
        tokens.tokens[:, : placeholder.tokens.shape[1]], placeholder.tokens.expand(5, -1, -1)
    )
    visual = prompts.visual[ENTITY_VISUAL]
    assert visual.image.tolist() == tokens.image.tolist() == [0, 0, 1, 1, 1]  # type: ignore[union-attr]
    for n, (b, k) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]):
        segment = batch["targets"][b]["masks"][k]
        stroke = visual.positive[n]
        assert stroke.any() and not (stroke & ~segment).any()  # the rectangles' strokes stay inside
    # the strokes are drawn again the same for the same batch (seeded per phrase)
    again = task.prompts(batch, ctx).visual[ENTITY_VISUAL]
    assert torch.equal(again.positive, visual.positive)


def test_visual_entities_train_the_visual_prompt_encoder() -> None:
    interface = tiny_interface(visual_prompts=True)
    task = visual_task(p=1.0)
    batch = interleave_batch([2, 3])
    ctx = context(interface)
    output = interface(features(batch), task.prompts(batch, ctx), batch["padding_mask"])
    total, _ = task.losses(output, batch, ctx)
    assert torch.isfinite(total)
    total.backward()
    encoder = interface.visual_prompt_encoder
    assert encoder is not None
    grads = {name: p.grad for name, p in encoder.named_parameters()}
    # the positive indicator row (an entity's stroke has positive points only) and the projections of
    # the levels that the 2 layers read (levels 0 and 1)
    assert grads["indicator.weight"] is not None and bool(grads["indicator.weight"][0].abs().sum() > 0)
    for name in ("projections.0", "projections.1"):
        grad = grads[name]
        assert grad is not None and bool(grad.abs().sum() > 0), name
    # the placeholder's content is the image query's: it gets gradient from the legend tokens
    assert interface.embeddings["queries__vision__image"].grad is not None


def test_evaluation_splits_text_and_visual_phrases() -> None:
    interface = tiny_interface(visual_prompts=True).eval()
    task = visual_task(p=0.5).eval()
    batch = interleave_batch([4, 4, 4])
    flags = [[s is not None for s in image] for image in task.own_strokes(batch)]
    assert any(any(f) for f in flags) and not all(all(f) for f in flags)  # a mix, at these seeds
    ctx = context(interface)
    with torch.no_grad():
        output = task.run(batch, features(batch), ctx)
        predictions = task.predict(output, batch, ctx)
    assert [p["visual"].tolist() for p in predictions] == flags
    metrics = task.build_metrics(EvaluatedDataset("fake", Vocabulary([], [])))
    assert metrics is not None
    task.update_metrics(metrics, batch, predictions, ctx)
    values = metrics.compute()
    assert {"cIoU", "P@0.5", "visual_cIoU", "visual_P@0.5", "IR@5", "IR@10"} <= set(values)
    text_count = int(metrics["grounding"].count)  # type: ignore[index]
    visual_count = int(metrics["visual_grounding"].count)  # type: ignore[index]
    assert (text_count, visual_count) == (
        sum(not f for i in flags for f in i),
        sum(f for i in flags for f in i),
    )


def test_evaluation_legends_do_not_see_their_image() -> None:
    """In evaluation the legend query reads the phrases as text: its image's features cannot reach it.

    Own-segment strokes in the legend would let the legend query read the image it must retrieve.
    """
    interface = tiny_interface(visual_prompts=True).eval()
    task = visual_task(p=0.5).eval()
    batch = interleave_batch([4, 4])
    ctx = context(interface)
    other = {level: torch.randn_like(value) for level, value in features(batch).items()}
    with torch.no_grad():
        first = task.run(batch, features(batch), ctx)
        second = task.run(batch, other, ctx)
    legend = "queries.interleave.legend"
    torch.testing.assert_close(first.last[legend]["embeddings"], second.last[legend]["embeddings"])
    image = "queries.vision.image"
    assert not torch.allclose(first.last[image]["embeddings"], second.last[image]["embeddings"])


def with_references(batch: Batch, seed: int = 0) -> Batch:
    """Give image 0's phrases a reference each (a random 48 x 64 image, a rectangle); image 1 none."""
    generator = torch.Generator().manual_seed(seed)
    for b, target in enumerate(batch["targets"]):
        count = len(phrases_of(target)[1])
        references: list[ReferenceImage | None] = []
        for k in range(count):
            if b != 0:
                references.append(None)
                continue
            mask = torch.zeros(48, 64, dtype=torch.bool)
            mask[8 + 4 * k : 30 + 4 * k, 10:40] = True
            image = torch.randint(0, 256, (3, 48, 64), generator=generator, dtype=torch.uint8)
            references.append(ReferenceImage(image=image, mask=mask))
        target["reference_images"] = references
    return batch


def reference_context(interface: FINDInterface) -> TaskContext:
    return TaskContext(interface=interface, encode_text=fake_encode_text, features=image_features)


def test_visual_retrieval_reads_the_references() -> None:
    interface = tiny_interface(visual_prompts=True).eval()
    task = visual_task(p=1.0).eval()
    batch = with_references(interleave_batch([2, 3]))
    ctx = reference_context(interface)
    with torch.no_grad():
        output = task.run(batch, features(batch), ctx)
        predictions = task.predict(output, batch, ctx)
        changed = task.run(with_references(interleave_batch([2, 3]), seed=1), features(batch), ctx)
        own_changed = task.run(batch, {k: torch.randn_like(v) for k, v in features(batch).items()}, ctx)
    embeddings, has_visual = output.extras[VISUAL_LEGEND]
    assert has_visual.tolist() == [True, False]
    assert "visual_legend_embedding" in predictions[0] and "visual_legend_embedding" not in predictions[1]
    # image 1 has no reference: its row of the visual forward reads its phrases as text, as the text legend
    torch.testing.assert_close(embeddings[1], output.last["queries.interleave.legend"]["embeddings"][1, 0])
    assert not torch.allclose(embeddings[0], output.last["queries.interleave.legend"]["embeddings"][0, 0])
    # the visual legend follows the reference image's pixels, not its own image's features
    assert not torch.allclose(changed.extras[VISUAL_LEGEND][0][0], embeddings[0])
    torch.testing.assert_close(own_changed.extras[VISUAL_LEGEND][0], embeddings)
    metrics = task.build_metrics(EvaluatedDataset("fake", Vocabulary([], [])))
    assert metrics is not None
    task.update_metrics(metrics, batch, predictions, ctx)
    values = metrics.compute()
    assert {"visual_IR@1", "visual_IR@5", "visual_IR@10", "IR@5"} <= set(values)
    # one visual legend (image 0) against a gallery of 2 images
    assert int(metrics["visual_retrieval"].text_embeddings[0].shape[0]) == 1  # type: ignore[index]


def test_training_is_one_forward_with_own_strokes() -> None:
    interface = tiny_interface(visual_prompts=True)
    task = visual_task(p=1.0)
    batch = with_references(interleave_batch([2, 3]))
    ctx = reference_context(interface)
    output = task.run(batch, features(batch), ctx)
    assert VISUAL_LEGEND not in output.extras  # references are for evaluation
    direct = interface(features(batch), task.prompts(batch, ctx), batch["padding_mask"])
    torch.testing.assert_close(
        output.last["queries.interleave.legend"]["embeddings"],
        direct.last["queries.interleave.legend"]["embeddings"],
    )


def test_visual_entities_score_proposals_by_mask_embeddings() -> None:
    """FIND's loss_interleave: visual entities by the raw dot of mask embeddings, text ones by cosine."""
    interface = tiny_interface(visual_prompts=True)
    batch = interleave_batch([4, 4])
    ctx = context(interface)
    task = visual_task(p=0.5)
    strokes = task.own_strokes(batch)
    flags = [[s is not None for s in image] for image in strokes]
    assert any(any(f) for f in flags) and not all(all(f) for f in flags)
    with torch.no_grad():
        output = interface(features(batch), task.prompts(batch, ctx), batch["padding_mask"])
        mixed = task.similarities(output, strokes)
        semantic = InterleaveTask(
            num_proposals=8, num_points=64, visual_prompt_p=0.5, visual_similarity="semantic"
        )
        cosine = semantic.similarities(output, strokes)
    last = output.last
    dot = last["proposals.interleave.entity"]["mask_embeddings"] @ last["queries.interleave.entity"][
        "mask_embeddings"
    ].transpose(1, 2)
    assert len(mixed) == len(output.layers)
    for b, image_flags in enumerate(flags):
        for k, is_visual in enumerate(image_flags):
            expected = dot[b, :, k] if is_visual else cosine[-1][b, :, k]
            torch.testing.assert_close(mixed[-1][b, :, k], expected)
    with pytest.raises(ValueError, match="visual_similarity"):
        InterleaveTask(visual_similarity="cosine")
