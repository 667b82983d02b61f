from __future__ import annotations

import math

import pytest
import torch

from findlit.interface.pixel_decoder import (
    PixelDecoder,
    PositionEmbeddingSine,
    downsample_padding,
    level_paddings,
    masked_group_norm,
)

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


def test_downsample_padding_keeps_cells_with_any_image_pixel() -> None:
    padding = torch.zeros(1, 10, 10, dtype=torch.bool)
    padding[0, :, 7:] = True  # 7 image columns of 10
    # a grid rounded up (3 cells of 4 cover 12 pixels): pixels past the input count as padding
    assert downsample_padding(padding, 4, (3, 3))[0].tolist() == [[False, False, True]] * 3
    # rounded down (2 cells of 4): the last 2 pixels are dropped
    assert downsample_padding(padding, 4, (2, 2))[0].tolist() == [[False, False]] * 2
    left = torch.ones(1, 8, 8, dtype=torch.bool)
    left[0, :5, 3:] = False  # padding on the left (flipped cached features) and at the bottom
    assert downsample_padding(left, 2, (4, 4))[0].tolist() == [
        [True, False, False, False],
        [True, False, False, False],
        [True, False, False, False],  # row 4 of the image: the cell is partly image
        [True, True, True, True],
    ]


def test_level_paddings_go_through_every_level_once_from_the_finest() -> None:
    padding = torch.ones(2, 128, 160, dtype=torch.bool)
    padding[0, :70, :100] = False
    padding[1] = False
    sizes = {"res2": (32, 40), "res3": (16, 20), "res4": (8, 10), "res5": (4, 5)}
    paddings = level_paddings(padding, sizes)
    for level, stride in {"res2": 4, "res3": 8, "res4": 16, "res5": 32}.items():
        assert paddings[level].shape == (2, *sizes[level])
        # the same as straight from the input
        assert paddings[level].equal(downsample_padding(padding, stride, sizes[level])), level
        rows, cols = -(-70 // stride), -(-100 // stride)
        assert not paddings[level][0, :rows, :cols].any() and paddings[level][0, rows:].all()
        assert paddings[level][0, :, cols:].all() and not paddings[level][1].any()


def test_masked_group_norm_is_group_norm_over_the_image_cells() -> None:
    norm = torch.nn.GroupNorm(4, 8)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = torch.randn(2, 8, 5, 6)
    padding = torch.zeros(2, 5, 6, dtype=torch.bool)
    padding[0, 3:] = True
    padding[0, :, :2] = True  # image 0 is rows 0..2, columns 2..5
    out = masked_group_norm(norm, x, padding.logical_not().unsqueeze(1).float())
    torch.testing.assert_close(out[:1, :, :3, 2:], norm(x[:1, :, :3, 2:]))
    torch.testing.assert_close(out[1:], norm(x[1:]))


def test_sine_positions_with_padding_are_relative_to_each_image() -> None:
    position = PositionEmbeddingSine(8)
    padding = torch.ones(2, 6, 9, dtype=torch.bool)
    padding[0, :4, 3:] = False  # a 4 x 6 image padded on the left and at the bottom
    padding[1] = False
    grid = position(torch.zeros(2, 3, 6, 9), padding)
    assert grid.shape == (2, 16, 6, 9) and torch.isfinite(grid).all()
    torch.testing.assert_close(grid[0, :, :4, 3:], position(torch.zeros(1, 3, 4, 6))[0])
    # cell (r=2, c=8) is the image's (2, 5): its centre in the image's own coordinates
    point = position.encode_points(torch.tensor([5.5 / 6, 2.5 / 4]))
    torch.testing.assert_close(grid[0, :, 2, 8], point)
    torch.testing.assert_close(grid[1], position(torch.zeros(1, 3, 6, 9))[0])


@pytest.mark.parametrize("layers", [0, 1])
def test_an_image_decodes_alike_alone_and_zero_padded_beside_a_larger_one(layers: int) -> None:
    """Padded features are the image's own zero-padded (the encoder's border response aside)."""
    decoder = PixelDecoder(
        CHANNELS, hidden_dim=32, mask_dim=16, num_encoder_layers=layers, heads=4, ffn_dim=64
    ).eval()
    alone, larger = _features(1, 64, 96), _features(1, 128, 160)
    features = {}
    for level, value in alone.items():
        padded = torch.zeros_like(larger[level])
        padded[..., : value.shape[-2], -value.shape[-1] :] = value  # on the right: padding on the left
        features[level] = torch.cat([padded, larger[level]])
    padding_mask = torch.zeros(2, 128, 160, dtype=torch.bool)
    padding_mask[0] = True
    padding_mask[0, :64, 64:] = False
    with torch.no_grad():
        one, two = decoder(alone), decoder(features, padding_mask)
    assert one.padding is None and two.padding is not None and two.mask_padding is not None
    torch.testing.assert_close(two.mask_features[:1, :, :16, 16:], one.mask_features)
    assert two.mask_padding[0, :16, 16:].logical_not().all() and two.mask_padding[0, 16:].all()
    for i, stride in enumerate((32, 16, 8)):
        region = (slice(0, 64 // stride), slice(64 // stride, None))
        torch.testing.assert_close(two.levels[i][:1, :, region[0], region[1]], one.levels[i])
        torch.testing.assert_close(two.positions[i][:1, :, region[0], region[1]], one.positions[i])
        valid = two.valid_keys()
        assert valid is not None and valid[i][0].sum() == one.levels[i].shape[-2] * one.levels[i].shape[-1]
