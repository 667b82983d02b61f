from __future__ import annotations

import pytest
import torch

from findlit.interface.layers import (
    CrossAttentionLayer,
    DecoderLayer,
    FFNLayer,
    SelfAttentionLayer,
    attention_mask,
)

DIM, HEADS = 32, 4


def _inputs(batch: int = 2, s: int = 5, skv: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, s, DIM, generator=g), torch.randn(batch, skv, DIM, generator=g)


def test_attention_mask_opens_empty_rows_and_adds_head_dim() -> None:
    attend = torch.tensor([[[True, False], [False, False]]])
    mask = attention_mask(attend, 1, 2, 2)
    assert mask is not None and mask.shape == (1, 1, 2, 2)
    assert mask[0, 0].tolist() == [[True, False], [True, True]]
    assert attention_mask(None, 1, 2, 2) is None
    with pytest.raises(TypeError):
        attention_mask(attend.float(), 1, 2, 2)
    with pytest.raises(ValueError):
        attention_mask(attend, 1, 3, 2)


def test_cross_attention_shapes_and_mask_restricts() -> None:
    torch.manual_seed(0)
    layer = CrossAttentionLayer(DIM, HEADS).eval()
    queries, memory = _inputs()
    attend = torch.zeros(2, 5, 7, dtype=torch.bool)
    attend[:, :, :3] = True  # keys 0..2 allowed for everyone
    out = layer(queries, memory, attend)
    assert out.shape == (2, 5, DIM)

    changed = memory.clone()
    changed[:, 5] += 10.0  # a masked-out key
    assert torch.allclose(layer(queries, changed, attend), out, atol=1e-6)
    changed = memory.clone()
    changed[:, 1] += 10.0  # an allowed key
    assert not torch.allclose(layer(queries, changed, attend), out, atol=1e-3)


def test_per_query_masks_and_positions() -> None:
    torch.manual_seed(0)
    layer = CrossAttentionLayer(DIM, HEADS).eval()
    queries, memory = _inputs()
    attend = torch.zeros(2, 5, 7, dtype=torch.bool)
    attend[:, 0, 0] = True
    attend[:, 1:, :] = True
    pos, memory_pos = torch.randn_like(queries), torch.randn_like(memory)
    out = layer(queries, memory, attend, pos, memory_pos)
    changed = memory.clone()
    changed[:, 3] += 5.0
    out2 = layer(queries, changed, attend, pos, memory_pos)
    assert torch.allclose(out2[:, 0], out[:, 0], atol=1e-6)  # query 0 sees key 0 only
    assert not torch.allclose(out2[:, 1:], out[:, 1:], atol=1e-3)
    # positional embeddings matter
    assert not torch.allclose(layer(queries, memory, attend), out, atol=1e-3)


def test_empty_row_attends_everything_without_nan() -> None:
    torch.manual_seed(0)
    layer = CrossAttentionLayer(DIM, HEADS).eval()
    queries, memory = _inputs()
    attend = torch.ones(2, 5, 7, dtype=torch.bool)
    attend[0, 2] = False  # query 2 of image 0 may attend nothing
    out = layer(queries, memory, attend)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, layer(queries, memory, None), atol=1e-6)


def test_self_attention_mask_restricts_and_shared_mask() -> None:
    torch.manual_seed(0)
    layer = SelfAttentionLayer(DIM, HEADS).eval()
    x, _ = _inputs()
    attend = torch.eye(5, dtype=torch.bool)  # [S,S] shared by the batch: each row sees only itself
    attend[0, 1] = True
    out = layer(x, attend)
    changed = x.clone()
    changed[:, 4] += 3.0
    out2 = layer(changed, attend)
    assert torch.allclose(out2[:, :4], out[:, :4], atol=1e-6)
    changed = x.clone()
    changed[:, 1] += 3.0
    out3 = layer(changed, attend)
    assert not torch.allclose(out3[:, 0], out[:, 0], atol=1e-3)  # row 0 reads row 1
    assert torch.allclose(out3[:, 2:], out[:, 2:], atol=1e-6)


def test_decoder_layer_gradients_cross_rows_and_bf16() -> None:
    torch.manual_seed(0)
    layer = DecoderLayer(DIM, HEADS, ffn_dim=64)
    x, memory = _inputs()
    memory.requires_grad_(True)
    cross = torch.rand(2, 5, 7) > 0.5
    self_attend = torch.ones(5, 5, dtype=torch.bool)
    out = layer(x, memory, cross, self_attend, pos=torch.randn_like(x), memory_pos=torch.randn_like(memory))
    assert out.shape == x.shape
    out.square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert memory.grad is not None

    # rows outside cross_rows skip cross-attention: with self-attention to themselves only, they
    # are independent of the memory
    layer.eval()
    rows = torch.tensor([True, True, False, True, False])
    eye = torch.eye(5, dtype=torch.bool)
    base = layer(x, memory, None, eye, cross_rows=rows)
    other = layer(x, memory + 1.0, None, eye, cross_rows=rows)
    assert torch.allclose(base[:, ~rows], other[:, ~rows], atol=1e-6)
    assert not torch.allclose(base[:, rows], other[:, rows], atol=1e-3)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x, memory, cross, self_attend)
    assert torch.isfinite(out.float()).all() and out.shape == x.shape


def test_ffn() -> None:
    ffn = FFNLayer(DIM, 64)
    x = torch.randn(2, 3, DIM)
    out = ffn(x)
    assert out.shape == x.shape
    out.sum().backward()
    assert all(p.grad is not None for p in ffn.parameters())
