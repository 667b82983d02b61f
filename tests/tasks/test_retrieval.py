"""RetrievalTask on the tiny interface of test_grounding."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from findlit.data.collate import Batch
from findlit.losses import symmetric_infonce
from findlit.tasks.retrieval import RetrievalTask
from tests.tasks.test_grounding import FULL, SMALL, TEXT_DIM, context, features, make_batch, tiny_interface


def retrieval_batch(counts: Sequence[int], sizes: Sequence[tuple[int, int]] | None = None) -> Batch:
    sizes = list(sizes or [FULL] * len(counts))
    targets = [{"captions": [f"caption {k} of picture {i}" for k in range(c)]} for i, c in enumerate(counts)]
    return make_batch("retrieval", sizes, targets)


def test_prompts_shapes() -> None:
    interface = tiny_interface()
    task = RetrievalTask().eval()  # evaluation reads every caption
    batch = retrieval_batch([2, 3])
    prompts = task.prompts(batch, context(interface))
    tokens = prompts.tokens["tokens.language.caption"]
    assert tokens.image is not None and tokens.image.tolist() == [0, 0, 1, 1, 1]
    assert tokens.tokens.shape[-1] == TEXT_DIM
    assert prompts.learned == {"queries.vision.image": 1}
    assert prompts.per_prompt == {"queries.language.caption": "tokens.language.caption"}
    output = interface(features(batch), prompts, batch["padding_mask"])
    assert output.last["queries.language.caption"]["embeddings"].shape == (2, 3, 16)
    assert output.last["queries.vision.image"]["embeddings"].shape == (2, 1, 16)


@pytest.mark.parametrize(
    ("train_captions", "expected"),
    [
        (1, [["caption 0 of picture 0"], ["caption 0 of picture 1"]]),
        (
            3,
            [
                ["caption 0 of picture 0", "caption 1 of picture 0", "caption 0 of picture 0"],
                ["caption 0 of picture 1", "caption 1 of picture 1", "caption 2 of picture 1"],
            ],
        ),
    ],
)
def test_training_reads_the_first_train_captions(train_captions: int, expected: list[list[str]]) -> None:
    interface = tiny_interface()
    task = RetrievalTask(train_captions=train_captions)
    batch = retrieval_batch([2, 3])
    seen: list[str] = []
    ctx = context(interface)
    encode = ctx.encode_text
    ctx.encode_text = lambda texts: (seen.extend(texts), encode(texts))[1]  # type: ignore[assignment]
    prompts = task.prompts(batch, ctx)
    assert seen == [text for texts in expected for text in texts]
    assert (
        prompts.tokens["tokens.language.caption"].image.tolist()
        == [0] * train_captions + [1] * train_captions
    )
    # the loss takes each image's captions as its positives
    output = interface(features(batch), prompts, batch["padding_mask"])
    _, logs = task.losses(output, batch, ctx)
    captions = output.last["queries.language.caption"]["embeddings"]
    assert captions.shape == (2, train_captions, 16)
    expected_loss = symmetric_infonce(
        output.last["queries.vision.image"]["embeddings"][:, 0], captions, output.logit_scale
    )
    assert logs["retrieval"].item() == pytest.approx(expected_loss.item())


def test_train_captions_must_be_positive() -> None:
    with pytest.raises(ValueError, match="train_captions"):
        RetrievalTask(train_captions=0)


def test_missing_caption_is_an_error() -> None:
    interface = tiny_interface()
    with pytest.raises(ValueError, match="at least one caption"):
        RetrievalTask().prompts(retrieval_batch([1, 0]), context(interface))


@pytest.mark.parametrize("counts", [[1], [1, 1, 1], [2, 1, 3]])
def test_losses_finite_and_backpropagate(counts: list[int]) -> None:
    interface = tiny_interface()
    task = RetrievalTask()
    batch = retrieval_batch(counts)
    ctx = context(interface)
    output = interface(features(batch), task.prompts(batch, ctx), batch["padding_mask"])
    total, logs = task.losses(output, batch, ctx)
    assert torch.isfinite(total)
    assert torch.allclose(total.detach(), 8 * logs["retrieval"])
    total.backward()
    assert next(interface.logit_scale.parameters()).grad is not None
    assert interface.language_projection.linear.weight.grad is not None
    if len(counts) > 1:  # one pair is its own only candidate: InfoNCE is exactly 0
        assert float(interface.language_projection.linear.weight.grad.abs().sum()) > 0
    else:
        assert float(total.detach()) == pytest.approx(0.0, abs=1e-6)
    assert interface.embeddings["queries__vision__image"].grad is not None


def test_predict_normalised_embeddings() -> None:
    interface = tiny_interface()
    task = RetrievalTask().eval()
    batch = retrieval_batch([2, 3], sizes=[FULL, SMALL])
    ctx = context(interface)
    with torch.no_grad():
        predictions = task.predict(
            interface(features(batch), task.prompts(batch, ctx), batch["padding_mask"]), batch, ctx
        )
    assert [p["caption_embeddings"].shape for p in predictions] == [(2, 16), (3, 16)]
    for prediction in predictions:
        assert prediction["image_embedding"].shape == (16,)
        assert torch.allclose(prediction["image_embedding"].norm(), torch.tensor(1.0), atol=1e-5)
        assert torch.allclose(
            prediction["caption_embeddings"].norm(dim=-1), torch.ones(len(prediction["caption_embeddings"]))
        )


def test_caption_embeddings_must_be_known() -> None:
    with pytest.raises(ValueError, match="caption_embeddings"):
        RetrievalTask(caption_embeddings="tokens")


def test_sentence_captions_are_their_projected_sentence_vectors_and_nothing_else() -> None:
    interface = tiny_interface()
    task = RetrievalTask(caption_embeddings="sentences").eval()
    batch = retrieval_batch([2, 3], sizes=[FULL, SMALL])
    ctx = context(interface)
    prompts = task.prompts(batch, ctx)
    # the decoder reads the image query only: no caption tokens, no caption queries
    assert prompts.learned == {"queries.vision.image": 1}
    assert not prompts.tokens and not prompts.per_prompt
    with torch.no_grad():
        predictions = task.predict(interface(features(batch), prompts), batch, ctx)
        for image, target in enumerate(batch["targets"]):
            expected = interface.embed_sentences(ctx.sentences(target["captions"]))
            expected = torch.nn.functional.normalize(expected, dim=-1)
            assert torch.allclose(predictions[image]["caption_embeddings"], expected, atol=1e-6)
        # so a caption's embedding depends neither on its image nor on its sibling captions
        alone = task.predict(
            interface(features(retrieval_batch([1])), task.prompts(retrieval_batch([1]), ctx)),
            retrieval_batch([1]),
            ctx,
        )
    first = predictions[0]["caption_embeddings"][0]
    assert torch.allclose(alone[0]["caption_embeddings"][0], first, atol=1e-6)


def test_sentence_captions_train_the_sentence_projection_and_the_image_query() -> None:
    interface = tiny_interface()
    task = RetrievalTask(caption_embeddings="sentences", train_captions=2)
    batch = retrieval_batch([2, 1, 3])
    ctx = context(interface)
    output = interface(features(batch), task.prompts(batch, ctx))
    total, logs = task.losses(output, batch, ctx)
    captions = interface.embed_sentences(
        ctx.sentences([text for target in batch["targets"] for text in (target["captions"] * 2)[:2]])
    ).reshape(3, 2, -1)
    expected = symmetric_infonce(
        output.last["queries.vision.image"]["embeddings"][:, 0], captions, output.logit_scale
    )
    assert logs["retrieval"].item() == pytest.approx(expected.item(), rel=1e-5)
    total.backward()
    assert float(interface.sentence_projection.linear.weight.grad.abs().sum()) > 0
    assert float(interface.embeddings["queries__vision__image"].grad.abs().sum()) > 0
    assert interface.language_projection.linear.weight.grad is None  # no token path
