"""GroundingTask on a tiny FIND interface with random features and a deterministic fake text encoder.

The helpers here (interface, features, fake ``encode_text``, batches) are shared by the other task tests.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import pytest
import torch
from torch import Tensor

from findlit.data.collate import Batch, collate_samples
from findlit.encoders.base import TextEmbeddings
from findlit.interface.find import FINDInterface
from findlit.tasks.base import TaskContext
from findlit.tasks.grounding import GroundingTask
from tests.training.test_module import INTERFACE

TEXT_DIM = 12
CHANNELS = {"res2": 8, "res3": 16, "res4": 24, "res5": 32}
STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
FULL = (64, 96)
SMALL = (40, 70)


def fake_encode_text(texts: Sequence[str]) -> TextEmbeddings:
    """One deterministic random vector per word (seeded by its CRC), padded to the longest string."""
    words = [text.split() or [""] for text in texts]
    length = max(len(w) for w in words)
    tokens = torch.zeros(len(texts), length, TEXT_DIM)
    mask = torch.zeros(len(texts), length, dtype=torch.bool)
    for i, row in enumerate(words):
        for j, word in enumerate(row):
            generator = torch.Generator().manual_seed(zlib.crc32(word.encode()))
            tokens[i, j] = torch.randn(TEXT_DIM, generator=generator)
            mask[i, j] = True
    sentence = (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    return TextEmbeddings(tokens=tokens, mask=mask, sentence=sentence)


def tiny_interface(**options: Any) -> FINDInterface:
    """The tiny test interface (``INTERFACE``: 2 layers, 32 wide) over :data:`CHANNELS` (``options`` add
    or replace arguments)."""
    torch.manual_seed(0)
    return FINDInterface(CHANNELS, TEXT_DIM, **(INTERFACE | options))


def context(interface: FINDInterface) -> TaskContext:
    return TaskContext(interface=interface, encode_text=fake_encode_text)


def features(batch: Batch) -> dict[str, Tensor]:
    b = batch["padding_mask"].shape[0]
    h, w = batch["padding_mask"].shape[-2:]
    generator = torch.Generator().manual_seed(b)
    return {
        level: torch.randn(b, c, h // STRIDES[level], w // STRIDES[level], generator=generator)
        for level, c in CHANNELS.items()
    }


def random_masks(n: int, size: tuple[int, int], seed: int) -> Tensor:
    """n rectangles inside an image of ``size``."""
    generator = torch.Generator().manual_seed(seed)
    h, w = size
    masks = torch.zeros(n, h, w, dtype=torch.bool)
    for k in range(n):
        y0 = int(torch.randint(0, h // 2, (1,), generator=generator))
        x0 = int(torch.randint(0, w // 2, (1,), generator=generator))
        masks[k, y0 : y0 + h // 3, x0 : x0 + w // 3] = True
    return masks


def make_batch(task: str, sizes: Sequence[tuple[int, int]], targets: Sequence[dict[str, Any]]) -> Batch:
    samples: list[Any] = []
    for i, (size, target) in enumerate(zip(sizes, targets, strict=True)):
        sample: dict[str, Any] = {
            "task": task,
            "dataset": "fake",
            "image_id": i,
            "image": torch.zeros(3, *size, dtype=torch.uint8),
            "orig_size": size,
            **target,
        }
        samples.append(sample)
    return collate_samples(samples)


def grounding_batch(counts: Sequence[int], sizes: Sequence[tuple[int, int]] | None = None) -> Batch:
    sizes = list(sizes or [FULL] * len(counts))
    targets = []
    for i, (count, size) in enumerate(zip(counts, sizes, strict=True)):
        masks = random_masks(count + 1, size, seed=i)
        targets.append(
            {
                "masks": masks,
                "sentences": [f"the thing number {k} of image {i}" for k in range(count)],
                "sentence_targets": torch.arange(count, dtype=torch.int64).flip(0),
            }
        )
    return make_batch("grounding", sizes, targets)


def grads_reach(interface: FINDInterface) -> None:
    grads = [p.grad for p in interface.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
    assert interface.mask_head.layers[0].weight.grad is not None
    assert interface.language_projection.linear.weight.grad is not None
    assert all(torch.isfinite(g).all() for g in grads)


def test_prompts_shapes() -> None:
    interface = tiny_interface()
    task = GroundingTask(num_proposals=8, num_points=64)
    batch = grounding_batch([2, 3])
    prompts = task.prompts(batch, context(interface))
    tokens = prompts.tokens["tokens.language.description"]
    assert tokens.num_prompts == 5
    assert tokens.image is not None and tokens.image.tolist() == [0, 0, 1, 1, 1]
    assert tokens.tokens.shape[-1] == TEXT_DIM
    assert prompts.learned == {"proposals.vision.grounding": 8}
    assert prompts.per_prompt == {"queries.language.description": "tokens.language.description"}
    output = interface(features(batch), prompts, batch["padding_mask"])
    assert output.last["queries.language.description"]["valid"].tolist() == [
        [True, True, False],
        [True, True, True],
    ]
    assert output.last["proposals.vision.grounding"]["mask_logits"].shape == (2, 8, 16, 24)


@pytest.mark.parametrize("counts", [[2], [2, 3, 1], [0, 2]])
def test_losses_finite_and_backpropagate(counts: list[int]) -> None:
    interface = tiny_interface()
    task = GroundingTask(num_proposals=8, num_points=64)
    batch = grounding_batch(counts)
    ctx = context(interface)
    output = interface(features(batch), task.prompts(batch, ctx), batch["padding_mask"])
    total, logs = task.losses(output, batch, ctx)
    assert total.dim() == 0 and torch.isfinite(total)
    assert {"ce", "bce", "dice", "ce_0", "dice_2"} <= set(logs)
    total.backward()
    grads_reach(interface)


def test_losses_use_sentence_targets() -> None:
    """The target of sentence s is masks[sentence_targets[s]]: a perfect proposal gets a low mask loss."""
    interface = tiny_interface()
    task = GroundingTask(num_proposals=8, num_points=64)
    batch = grounding_batch([2])
    ctx = context(interface)
    output = interface(features(batch), task.prompts(batch, ctx), batch["padding_mask"])
    target = batch["targets"][0]
    wanted = target["masks"][target["sentence_targets"]].float()  # [2,H,W]
    logits = torch.nn.functional.interpolate(wanted[None], size=(16, 24), mode="area")[0]
    perfect = (logits - 0.5) * 200
    for layer in output.layers:
        mask_logits = layer["proposals.vision.grounding"]["mask_logits"].detach().clone()
        mask_logits[0, :2] = perfect
        layer["proposals.vision.grounding"]["mask_logits"] = mask_logits
    _, logs = task.losses(output, batch, ctx)
    assert float(logs["dice"]) < 0.2


def test_predict_crops_to_image_sizes() -> None:
    interface = tiny_interface()
    task = GroundingTask(num_proposals=8, num_points=64)
    batch = grounding_batch([2, 3], sizes=[FULL, SMALL])
    assert batch["padding_mask"].shape[-2:] == (64, 96)
    ctx = context(interface)
    with torch.no_grad():
        output = interface(features(batch), task.prompts(batch, ctx), batch["padding_mask"])
        predictions = task.predict(output, batch, ctx)
    assert len(predictions) == 2
    for prediction, count, size in zip(predictions, [2, 3], [FULL, SMALL], strict=True):
        assert prediction["masks"].shape == (count, *size) and prediction["masks"].dtype == torch.bool
        assert prediction["scores"].shape == (count,)
        assert ((prediction["scores"] >= 0) & (prediction["scores"] <= 1)).all()
        assert len(prediction["sentences"]) == count
