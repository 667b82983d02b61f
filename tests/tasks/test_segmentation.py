"""SegmentationTask: prompts, losses and predictions on a tiny interface, and the post-processing by hand."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from torch import Tensor

from findlit.data.collate import Batch
from findlit.encoders.base import TextEmbeddings
from findlit.interface.find import IMAGE_QUERY, FINDInterface
from findlit.losses import LossWeights
from findlit.tasks.base import TaskContext, Vocabulary
from findlit.tasks.segmentation import (
    CLASS_QUERY,
    CLASS_TOKENS,
    OBJECT,
    SegmentationTask,
    instance_inference,
    panoptic_inference,
    semantic_inference,
)

CHANNELS = {"res2": 8, "res3": 16, "res4": 24, "res5": 32}
STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
TEXT_DIM = 12
FRAME = (64, 96)
PROPOSALS = 8
VOCABULARY = Vocabulary(
    class_names=["person", "car", "sky", "grass"], thing_classes=[True, True, False, False]
)
K = len(VOCABULARY.class_names)


def encode_text(texts: Sequence[str]) -> TextEmbeddings:
    """Deterministic fake text encoder: one embedding per character, seeded by its code point."""
    length = max(len(t) for t in texts)
    tokens = torch.zeros(len(texts), length, TEXT_DIM)
    mask = torch.zeros(len(texts), length, dtype=torch.bool)
    for i, text in enumerate(texts):
        for j, char in enumerate(text):
            tokens[i, j] = torch.randn(TEXT_DIM, generator=torch.Generator().manual_seed(ord(char)))
            mask[i, j] = True
    sentence = tokens.sum(1) / mask.sum(1, keepdim=True)
    return TextEmbeddings(tokens, mask, sentence)


@pytest.fixture
def context() -> TaskContext:
    torch.manual_seed(0)
    interface = FINDInterface(
        CHANNELS,
        TEXT_DIM,
        hidden_dim=32,
        num_layers=2,
        num_heads=4,
        ffn_dim=64,
        num_proposals=PROPOSALS,
        embed_dim=16,
    )
    return TaskContext(interface=interface, encode_text=encode_text, vocabularies={"toy": VOCABULARY})


def make_batch(image_sizes: Sequence[tuple[int, int]], seed: int = 0) -> Batch:
    """Random features of the padded frame, a padding mask and per-image random segments."""
    generator = torch.Generator().manual_seed(seed)
    count = len(image_sizes)
    height, width = FRAME
    features = {
        level: torch.randn(count, c, height // STRIDES[level], width // STRIDES[level], generator=generator)
        for level, c in CHANNELS.items()
    }
    padding_mask = torch.ones(count, height, width, dtype=torch.bool)
    targets = []
    for b, (h, w) in enumerate(image_sizes):
        padding_mask[b, :h, :w] = False
        masks = torch.zeros(3, height, width, dtype=torch.bool)
        masks[0, : h // 2, : w // 2] = True  # a thing
        masks[1, h // 2 : h, : w // 2] = True  # another thing
        masks[2, :h, w // 2 : w] = True  # stuff
        targets.append(
            {
                "masks": masks,
                "labels": torch.tensor([0, 1, 2 + b % 2]),
                "is_thing": torch.tensor([True, True, False]),
                "ignore_mask": padding_mask[b].clone(),
            }
        )
    return Batch(
        task="segmentation",
        dataset="toy",
        padding_mask=padding_mask,
        image_ids=list(range(count)),
        image_sizes=list(image_sizes),
        orig_sizes=list(image_sizes),
        targets=targets,
        features=features,
    )


def small_task(**kwargs: object) -> SegmentationTask:
    return SegmentationTask(num_proposals=PROPOSALS, num_points=256, **kwargs)  # type: ignore[arg-type]


def test_prompts(context: TaskContext) -> None:
    prompts = small_task().prompts(make_batch([FRAME]), context)
    assert prompts.learned == {OBJECT: PROPOSALS, IMAGE_QUERY: 1}
    assert prompts.per_prompt == {CLASS_QUERY: CLASS_TOKENS}
    tokens = prompts.tokens[CLASS_TOKENS]
    longest = max(len(n) for n in VOCABULARY.class_names)
    assert tokens.tokens.shape == (K, longest, TEXT_DIM)
    assert tokens.mask.shape == (K, longest)
    assert tokens.image is None
    assert tokens.mask.sum(1).tolist() == [len(n) for n in VOCABULARY.class_names]


def test_unknown_dataset_and_outputs(context: TaskContext) -> None:
    batch = make_batch([FRAME])
    batch["dataset"] = "other"
    with pytest.raises(KeyError, match="other"):
        small_task().prompts(batch, context)
    with pytest.raises(ValueError, match="unknown"):
        SegmentationTask(outputs=("panoptic", "depth"))


@pytest.mark.parametrize("batch_size", [1, 3])
def test_losses_finite_with_grads(context: TaskContext, batch_size: int) -> None:
    task = small_task(weights=LossWeights())
    batch = make_batch([FRAME] * batch_size)
    output = context.interface(batch["features"], task.prompts(batch, context), batch["padding_mask"])
    assert output.last[OBJECT]["mask_logits"].shape == (batch_size, PROPOSALS, 16, 24)
    total, logs = task.losses(output, batch, context)
    assert total.dim() == 0 and torch.isfinite(total)
    assert logs and all(torch.isfinite(v).all() for v in logs.values())
    total.backward()
    grads = [p.grad for p in context.interface.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
    no_object = context.interface.no_object.parameters()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in no_object)


def test_predict_shapes_cropped(context: TaskContext) -> None:
    sizes = [(64, 80), (50, 96)]
    task = small_task(max_detections=5, object_mask_threshold=0.0, overlap_threshold=0.0)
    batch = make_batch(sizes)
    with torch.no_grad():
        output = context.interface(batch["features"], task.prompts(batch, context), batch["padding_mask"])
    predictions = task.predict(output, batch, context)
    assert len(predictions) == 2
    for (h, w), prediction in zip(sizes, predictions, strict=True):
        assert set(prediction) == {"panoptic", "instance", "semantic"}
        semantic = prediction["semantic"]
        assert semantic.shape == (h, w) and semantic.dtype == torch.int64
        assert int(semantic.min()) >= 0 and int(semantic.max()) < K
        ids, segments = prediction["panoptic"]
        assert ids.shape == (h, w) and ids.dtype == torch.int64
        listed = {s["id"] for s in segments}
        present = set(ids.unique().tolist()) - {0}
        assert present == listed
        assert len(listed) == len(segments)
        for segment in segments:
            assert 0 <= segment["category"] < K
            assert segment["isthing"] == VOCABULARY.thing_classes[segment["category"]]
        instance = prediction["instance"]
        n = int(instance["labels"].shape[0])
        assert n == 5
        assert instance["masks"].shape == (n, h, w) and instance["masks"].dtype == torch.bool
        assert instance["labels"].dtype == torch.int64
        assert all(VOCABULARY.thing_classes[c] for c in instance["labels"].tolist())
        assert instance["scores"].shape == (n,)
        assert bool((instance["scores"][:-1] >= instance["scores"][1:]).all())


def test_predict_selected_outputs(context: TaskContext) -> None:
    task = small_task(outputs=("semantic",))
    batch = make_batch([FRAME])
    with torch.no_grad():
        output = context.interface(batch["features"], task.prompts(batch, context), batch["padding_mask"])
    (prediction,) = task.predict(output, batch, context)
    assert set(prediction) == {"semantic"}


def _probs(rows: Sequence[tuple[int, float]]) -> Tensor:
    """float[Q,K+1]: each query puts ``p`` on its class (K = no object) and spreads the rest."""
    probs = torch.zeros(len(rows), K + 1)
    for q, (label, p) in enumerate(rows):
        probs[q] = (1 - p) / K
        probs[q, label] = p
    return probs


def _masks(regions: Sequence[tuple[slice, slice]], size: tuple[int, int] = (8, 8)) -> Tensor:
    """float[Q,h,w] logits: +10 inside each query's region, -10 outside."""
    logits = torch.full((len(regions), *size), -10.0)
    for q, (rows, cols) in enumerate(regions):
        logits[q, rows, cols] = 10.0
    return logits


def test_panoptic_by_hand() -> None:
    everything = slice(None)
    probs = _probs([(0, 0.95), (1, 0.9), (K, 0.99), (2, 0.9), (2, 0.85), (3, 0.5)])
    logits = _masks(
        [
            (slice(0, 4), slice(0, 4)),  # person, confident
            (slice(0, 4), slice(4, 8)),  # car, confident
            (everything, everything),  # no object: dropped
            (slice(4, 8), slice(0, 4)),  # sky
            (slice(4, 8), slice(4, 8)),  # sky again: merged with the previous
            (everything, everything),  # grass below the threshold: dropped
        ]
    )
    ids, segments = panoptic_inference(probs, logits, VOCABULARY.thing_classes, 0.8, 0.8)
    assert [(s["id"], s["category"], s["isthing"]) for s in segments] == [
        (1, 0, True),
        (2, 1, True),
        (3, 2, False),
    ]
    assert segments[2]["score"] == pytest.approx(0.9)
    expected = torch.zeros(8, 8, dtype=torch.int64)
    expected[:4, :4], expected[:4, 4:], expected[4:, :] = 1, 2, 3
    assert torch.equal(ids, expected)


def test_panoptic_overlap_and_empty() -> None:
    # query 1 covers everything but wins 48 of its 64 pixels (0.75 < 0.8) -> dropped; they become void
    probs = _probs([(0, 0.95), (2, 0.9)])
    logits = _masks([(slice(0, 4), slice(0, 4)), (slice(None), slice(None))])
    ids, segments = panoptic_inference(probs, logits, VOCABULARY.thing_classes, 0.8, 0.8)
    assert [s["category"] for s in segments] == [0]
    assert int((ids == 1).sum()) == 16 and int((ids == 0).sum()) == 48
    ids, segments = panoptic_inference(_probs([(K, 0.9)]), logits[:1], VOCABULARY.thing_classes)
    assert segments == [] and int(ids.abs().sum()) == 0


def test_semantic_and_instance_by_hand() -> None:
    probs = _probs([(0, 0.95), (2, 0.9)])
    logits = _masks([(slice(0, 4), slice(None)), (slice(4, 8), slice(None))])
    semantic = semantic_inference(probs, logits)
    assert semantic.dtype == torch.int64
    assert bool((semantic[:4] == 0).all()) and bool((semantic[4:] == 2).all())
    instance = instance_inference(probs, logits, VOCABULARY.thing_classes, max_detections=3)
    assert instance["labels"].tolist()[0] == 0  # person from query 0, the best thing pair
    assert torch.equal(instance["masks"][0], logits[0] > 0)
    assert float(instance["scores"][0]) == pytest.approx(0.95, abs=1e-3)
    assert instance["labels"].shape == (3,)
    assert all(VOCABULARY.thing_classes[c] for c in instance["labels"].tolist())


def test_semantic_inference_in_class_chunks_equals_the_whole_argmax() -> None:
    generator = torch.Generator().manual_seed(0)
    probs = torch.randn(7, 51, generator=generator).softmax(dim=-1)
    logits = torch.randn(7, 9, 11, generator=generator) * 3
    whole = torch.einsum("qk,qhw->khw", probs[:, :-1], logits.sigmoid()).argmax(dim=0)
    for chunk in (1, 99, 3 * 99 + 5, 10**9):  # 1 class per chunk, 1, 3 (uneven), all at once
        assert torch.equal(semantic_inference(probs, logits, chunk_elements=chunk), whole)
    # ties go to the lowest class index, also across chunks (here one class per chunk): 3 and 4 tie
    tied = torch.zeros(2, 6)
    tied[0, 3] = tied[0, 4] = 0.5
    tied[1, 0] = 0.2
    tied[:, -1] = 1 - tied[:, :-1].sum(dim=1)
    assert bool((semantic_inference(tied, torch.zeros(2, 2, 2), chunk_elements=4) == 3).all())


def test_sentence_class_embeddings_leave_the_decoder_sequence(context: TaskContext) -> None:
    """``class_embeddings="sentences"``: no class rows in the decoder; logits per class; gradients flow."""
    task = small_task(class_embeddings="sentences")
    batch = make_batch([FRAME, FRAME])
    prompts = task.prompts(batch, context)
    assert (
        prompts.learned == {OBJECT: PROPOSALS, IMAGE_QUERY: 1}
        and not prompts.tokens
        and not prompts.per_prompt
    )
    output = context.interface(batch["features"], prompts, batch["padding_mask"])
    assert CLASS_QUERY not in output.last
    logits = task.class_logits(output, batch, context)
    assert logits.shape == (2, PROPOSALS, K + 1)
    # the class embeddings are the class names' own: reordering the names reorders the logit columns
    reordered = Vocabulary(
        VOCABULARY.class_names[::-1], VOCABULARY.thing_classes[::-1], VOCABULARY.category_ids[::-1]
    )
    context.vocabularies["reordered"] = reordered
    batch["dataset"] = "reordered"
    flipped = task.class_logits(output, batch, context)
    torch.testing.assert_close(flipped[..., :K], logits[..., :K].flip(-1))
    batch["dataset"] = "toy"
    total, _ = task.losses(output, batch, context)
    total.backward()
    # through their own projection, not the token path's (which no prompt of this batch used)
    projection = context.interface.sentence_projection.linear.weight.grad
    assert projection is not None and float(projection.abs().sum()) > 0
    assert context.interface.language_projection.linear.weight.grad is None


def test_sentence_class_embeddings_read_encode_sentences_when_the_context_has_it(
    context: TaskContext,
) -> None:
    task = small_task(class_embeddings="sentences")
    batch = make_batch([FRAME])
    output = context.interface(batch["features"], task.prompts(batch, context), batch["padding_mask"])
    asked: list[list[str]] = []

    def encode_sentences(texts: Sequence[str]) -> Tensor:
        asked.append(list(texts))
        return encode_text(texts).sentence

    fast = TaskContext(context.interface, encode_text, context.vocabularies, encode_sentences)
    torch.testing.assert_close(
        task.class_logits(output, batch, fast), task.class_logits(output, batch, context)
    )
    assert asked == [VOCABULARY.class_names]


def test_unknown_class_embeddings_source() -> None:
    with pytest.raises(ValueError, match="class_embeddings"):
        SegmentationTask(class_embeddings="tokens")
