import math
from pathlib import Path

import pytest
import torch

from findlit.losses.contrastive import gather_with_grad, symmetric_infonce
from tests.losses.ddp_contrastive import build, captions, grads
from tests.losses.two_ranks import run_two_rank_script

TOLERANCE = 1e-5  # DDP gradients vs one process on the concatenated batch (float32)


def test_single_process_equals_a_hand_computation() -> None:
    image = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, -2.0]])
    text = torch.tensor([[1.0, 1.0], [2.0, 0.0], [0.5, 0.5]])
    scale = 2.0

    def unit(v: list[float]) -> list[float]:
        norm = math.hypot(*v)
        return [x / norm for x in v]

    im, tx = [unit(v) for v in image.tolist()], [unit(v) for v in text.tolist()]

    def ce(rows: list[list[float]], cols: list[list[float]]) -> float:
        total = 0.0
        for i, row in enumerate(rows):
            logits = [scale * sum(a * b for a, b in zip(row, col, strict=True)) for col in cols]
            total += math.log(sum(math.exp(z) for z in logits)) - logits[i]
        return total / len(rows)

    expected = (ce(im, tx) + ce(tx, im)) / 2
    got = symmetric_infonce(image, text, torch.tensor(scale))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert symmetric_infonce(image, text, torch.tensor(scale), gather=False).item() == pytest.approx(expected)


def _brute_force_multi(image: torch.Tensor, text: torch.Tensor, valid: torch.Tensor, scale: float) -> float:
    """The multi-caption loss by its definition, one image and one text at a time."""
    image = torch.nn.functional.normalize(image.double(), dim=-1)
    text = torch.nn.functional.normalize(text.double(), dim=-1)
    texts = [(b, text[b, j]) for b in range(text.shape[0]) for j in range(text.shape[1]) if valid[b, j]]
    image_terms = []
    for b in range(image.shape[0]):
        logits = torch.stack([scale * image[b] @ t for _, t in texts])
        log_probs = logits.log_softmax(0)
        own = [log_probs[i] for i, (owner, _) in enumerate(texts) if owner == b]
        image_terms.append(-sum(own) / len(own))
    text_terms = []
    for owner, t in texts:
        logits = scale * image @ t
        text_terms.append(-logits.log_softmax(0)[owner])
    return float((sum(image_terms) / len(image_terms) + sum(text_terms) / len(text_terms)) / 2)


def test_several_texts_per_image_equal_the_definition() -> None:
    generator = torch.Generator().manual_seed(0)
    image, text = torch.randn(4, 6, generator=generator), torch.randn(4, 3, 6, generator=generator)
    valid = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 1, 1], [1, 1, 0]], dtype=torch.bool)
    got = symmetric_infonce(image, text, torch.tensor(3.0), valid=valid)
    assert got.item() == pytest.approx(_brute_force_multi(image, text, valid, 3.0), rel=1e-5)
    everything = torch.ones(4, 3, dtype=torch.bool)
    assert symmetric_infonce(image, text, torch.tensor(3.0)).item() == pytest.approx(
        _brute_force_multi(image, text, everything, 3.0), rel=1e-5
    )
    # one text per image, as [N, 1, D], is CLIP's loss
    single = symmetric_infonce(image, text[:, 0], torch.tensor(3.0))
    assert symmetric_infonce(image, text[:, :1], torch.tensor(3.0)).item() == pytest.approx(single.item())
    # an image without any valid text has no positive
    with pytest.raises(ValueError, match="at least one valid text"):
        symmetric_infonce(
            image, text, torch.tensor(3.0), valid=valid & torch.tensor([[1], [1], [1], [0]]).bool()
        )


def test_gather_is_a_no_op_without_a_process_group() -> None:
    x = torch.randn(4, 3)
    assert gather_with_grad(x) is x


def test_shapes_are_checked_and_bf16_runs() -> None:
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        symmetric_infonce(torch.randn(3, 4), torch.randn(2, 4), torch.tensor(1.0))
    image = torch.randn(4, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = symmetric_infonce(image.bfloat16(), torch.randn(4, 8).bfloat16(), torch.tensor(10.0))
    assert loss.dtype == torch.float32
    loss.backward()
    assert image.grad is not None and torch.isfinite(image.grad).all()


@pytest.mark.slow
def test_ddp_gradients_equal_one_process_on_the_whole_batch(tmp_path: Path) -> None:
    ddp = run_two_rank_script("ddp_contrastive.py", tmp_path / "grads.pt")

    model, image, text = build()
    img, txt, scale = model(image, text)
    loss = symmetric_infonce(img, txt, scale)
    loss.backward()
    reference = grads(model)

    assert ddp["mean_loss"].item() == pytest.approx(loss.item(), abs=TOLERANCE)
    assert reference.keys() == ddp["correct"].keys() == ddp["naive"].keys()
    for name, expected in reference.items():
        assert torch.allclose(ddp["correct"][name], expected, atol=TOLERANCE, rtol=0), name
    model, image, _ = build()
    img, txt, scale = model(image, captions())
    symmetric_infonce(img, txt, scale).backward()
    for name, expected in grads(model).items():
        assert torch.allclose(ddp["multi"][name], expected, atol=TOLERANCE, rtol=0), name
    # the naive gather (local chunk put back, nothing else) drops the cross-rank terms: visibly wrong
    naive_error = max((ddp["naive"][n] - reference[n]).abs().max().item() for n in reference)
    assert naive_error > 100 * TOLERANCE
