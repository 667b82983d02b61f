from __future__ import annotations

import math

import pytest
import torch

from findlit.interface.pixel_decoder import PixelDecoder, PositionEmbeddingSine

CHANNELS = {"res2": 8, "res3": 12, "res4": 16, "res5": 24}


def _features(batch: int = 2, h: int = 64, w: int = 96, dtype: torch.dtype = torch.float32) -> dict:
    g = torch.Generator().manual_seed(0)
    strides = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
    return {
        level: torch.randn(batch, CHANNELS[level], h // s, w // s, generator=g).to(dtype)
        for level, s in strides.items()
    }


def test_outputs_shapes_and_order() -> None:
    decoder = PixelDecoder(CHANNELS, hidden_dim=32, mask_dim=16, heads=4, ffn_dim=64)
    out = decoder(_features())
    assert out.mask_features.shape == (2, 16, 16, 24)
    assert out.sizes == [(2, 3), (4, 6), (8, 12)]  # strides 32, 16, 8
    for level, pos in zip(out.levels, out.positions, strict=True):
        assert level.shape[:2] == (2, 32) and pos.shape == level.shape
    assert out.level_embeddings.shape == (3, 32)
    keys, pos = out.memory(1)
    assert keys.shape == (2, 24, 32) and pos.shape == (2, 24, 32)
    assert torch.allclose(keys[0, 7], out.levels[1][0, :, 1, 1] + out.level_embeddings[1])


@pytest.mark.parametrize("layers", [0, 2])
def test_gradients_reach_every_parameter(layers: int) -> None:
    decoder = PixelDecoder(
        CHANNELS, hidden_dim=32, mask_dim=16, num_encoder_layers=layers, heads=4, ffn_dim=64
    )
    out = decoder(_features())
    loss = out.mask_features.square().mean() + sum(level.square().mean() for level in out.levels)
    loss = loss + sum(out.memory(i)[0].square().mean() for i in range(3))
    loss.backward()
    for name, p in decoder.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_fp16_features_and_bf16_autocast() -> None:
    decoder = PixelDecoder(CHANNELS, hidden_dim=32, mask_dim=16, heads=4, ffn_dim=64)
    out = decoder(_features(dtype=torch.float16))
    assert out.mask_features.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = decoder(_features(dtype=torch.float16))
    assert torch.isfinite(out.mask_features.float()).all()


def test_missing_level_is_an_error() -> None:
    with pytest.raises(ValueError, match="res2"):
        PixelDecoder({"res3": 8, "res4": 8, "res5": 8})


def test_sine_positions_grid_matches_points() -> None:
    position = PositionEmbeddingSine(8)
    grid = position(torch.zeros(1, 3, 4, 6))
    assert grid.shape == (1, 16, 4, 6)
    # cell (r=2, c=5) sits at ((5 + .5) / 6, (2 + .5) / 4)
    point = position.encode_points(torch.tensor([5.5 / 6, 2.5 / 4]))
    assert torch.allclose(grid[0, :, 2, 5], point, atol=1e-6)
    # first channel pair: sin / cos of y * 2π
    assert math.isclose(point[0].item(), math.sin(2.5 / 4 * 2 * math.pi), abs_tol=1e-6)
    assert math.isclose(point[1].item(), math.cos(2.5 / 4 * 2 * math.pi), abs_tol=1e-6)
    assert math.isclose(point[8].item(), math.sin(5.5 / 6 * 2 * math.pi), abs_tol=1e-6)
