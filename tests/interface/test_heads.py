from __future__ import annotations

import math

import torch

from findlit.interface.heads import (
    LogitScale,
    MaskHead,
    MaskPooledEmbedding,
    NoObjectEmbedding,
    SemanticProjection,
    attention_mask_from_logits,
    class_logits,
)


def test_mask_head_shapes_and_gradients() -> None:
    head = MaskHead(32, 16)
    x = torch.randn(2, 5, 32)
    mask_features = torch.randn(2, 16, 16, 24)
    embeddings, logits = head(x, mask_features)
    assert embeddings.shape == (2, 5, 16)
    assert logits.shape == (2, 5, 16, 24)
    assert torch.allclose(logits[1, 3, 4, 7], embeddings[1, 3] @ mask_features[1, :, 4, 7], atol=1e-5)
    logits.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())


def test_mask_pooled_embedding_is_the_mlp_of_the_weighted_mean_under_the_mask() -> None:
    torch.manual_seed(0)
    pool = MaskPooledEmbedding(8, 6)
    features = torch.randn(1, 8, 4, 4)
    logits = torch.full((1, 2, 4, 4), -30.0)
    logits[0, 0, :2, :2] = 30.0  # proposal 0: the top-left 2x2 block (sigmoid 1 there, 0 elsewhere)
    logits.requires_grad_()
    pooled = pool(logits, features)
    assert pooled.shape == (1, 2, 6)
    # weighted mean with one unit of prior weight: 4 pixels of weight 1 -> sum / 5
    expected = pool.mlp(features[0, :, :2, :2].sum(dim=(-1, -2)) / 5)
    assert torch.allclose(pooled[0, 0], expected, atol=1e-5)
    # an empty mask pools to the zero vector, so the MLP sees 0 rather than a division by zero
    assert torch.allclose(pooled[0, 1], pool.mlp(torch.zeros(8)), atol=1e-5)
    # the masks are detached: classification through the pooled vector does not reshape them
    pooled.sum().backward()
    assert logits.grad is None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pool.parameters())


def test_mask_pooled_embedding_leaves_padded_cells_out() -> None:
    torch.manual_seed(0)
    pool = MaskPooledEmbedding(8, 6)
    features = torch.randn(1, 8, 4, 4)
    logits = torch.full((1, 1, 4, 4), -30.0)
    logits[0, 0, :2] = 30.0  # the top two rows, of which row 1 is padding
    padding = torch.zeros(1, 4, 4, dtype=torch.bool)
    padding[0, 1:] = True
    expected = pool.mlp(features[0, :, 0].sum(-1) / 5)  # row 0 only: 4 cells of weight 1
    torch.testing.assert_close(pool(logits, features, padding)[0, 0], expected)


def test_attention_mask_from_logits_thresholds() -> None:
    logits = torch.full((1, 2, 8, 8), -5.0)
    logits[0, 0, :4] = 5.0  # top half of proposal 0
    logits[0, 1] = 0.0  # sigmoid exactly 0.5: allowed
    logits.requires_grad_(True)
    attend = attention_mask_from_logits(logits, (4, 4))
    assert attend.shape == (1, 2, 16) and attend.dtype == torch.bool
    assert attend[0, 0].view(4, 4)[:2].all() and not attend[0, 0].view(4, 4)[2:].any()
    assert attend[0, 1].all()
    assert not attend.requires_grad
    assert not attention_mask_from_logits(logits, (4, 4), threshold=0.9)[0, 1].any()


def test_class_logits_cosine_scale_and_open_vocabulary() -> None:
    g = torch.Generator().manual_seed(0)
    proposals = torch.randn(2, 3, 8, generator=g)
    classes = torch.randn(5, 8, generator=g)
    logits = class_logits(proposals, classes, 10.0)
    assert logits.shape == (2, 3, 5)
    cosine = torch.nn.functional.cosine_similarity(proposals[1, 2], classes[4], dim=0)
    assert torch.allclose(logits[1, 2, 4], 10.0 * cosine, atol=1e-5)
    # scale invariance of the embeddings
    assert torch.allclose(class_logits(proposals * 7.0, classes * 0.1, 10.0), logits, atol=1e-5)
    # any vocabulary size, per-image vocabularies
    per_image = torch.randn(2, 11, 8, generator=g)
    assert class_logits(proposals, per_image, 1.0).shape == (2, 3, 11)
    assert logits.abs().max() <= 10.0 + 1e-5


def test_no_object_column() -> None:
    no_object = NoObjectEmbedding(8)
    proposals = torch.randn(2, 3, 8)
    classes = torch.randn(5, 8)
    logits = class_logits(proposals, classes, 2.0, no_object())
    assert logits.shape == (2, 3, 6)
    assert torch.allclose(logits[..., :5], class_logits(proposals, classes, 2.0))
    logits[..., 5].sum().backward()
    assert no_object.embedding.grad is not None


def test_logit_scale_init_clamp_and_gradient() -> None:
    scale = LogitScale()
    assert math.isclose(scale().item(), 1 / 0.07, rel_tol=1e-5)
    scale().backward()
    assert scale.log_scale.grad is not None
    with torch.no_grad():
        scale.log_scale.fill_(10.0)
    assert math.isclose(scale().item(), 100.0, rel_tol=1e-5)


def test_semantic_projection_and_bf16() -> None:
    projection = SemanticProjection(32, 16)
    x = torch.randn(2, 4, 32)
    out = projection(x)
    assert out.shape == (2, 4, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = class_logits(projection(x), torch.randn(3, 16), LogitScale()())
        _, masks = MaskHead(32, 16)(x, torch.randn(2, 16, 8, 8))
    assert torch.isfinite(logits.float()).all() and logits.shape == (2, 4, 3)
    assert masks.shape == (2, 4, 8, 8)
