from __future__ import annotations

import torch

from findlit.encoders.base import TextEmbeddings
from findlit.interface.prompts import (
    LanguageProjection,
    boxes_to_masks,
    points_to_masks,
    sample_features,
    sample_mask_points,
    sample_prompt_points,
)

H, W, DIM = 64, 96, 32


def _coordinate_map(h: int, w: int, batch: int = 2) -> torch.Tensor:
    """float[B,DIM,h,w]: channel 0 = x, 1 = y of the cell centre in 0..1, channel 2 = image index."""
    ys = (torch.arange(h) + 0.5) / h
    xs = (torch.arange(w) + 0.5) / w
    grid = torch.zeros(batch, DIM, h, w)
    grid[:, 0] = xs[None, None, :]
    grid[:, 1] = ys[None, :, None]
    grid[:, 2] = torch.arange(batch, dtype=torch.float32)[:, None, None]
    return grid


def _masks() -> torch.Tensor:
    masks = torch.zeros(3, H, W, dtype=torch.bool)
    masks[0, 10:30, 20:50] = True
    masks[1, 40:60, 5:15] = True
    masks[1, 0:4, 90:96] = True  # a second component at a corner
    masks[2, 30, 30] = True  # a single pixel: only one valid positive
    return masks


def test_language_projection() -> None:
    mask = torch.tensor([[True, True, False], [True, False, False]])
    embeddings = TextEmbeddings(torch.randn(2, 3, 12) * mask[..., None], mask, torch.randn(2, 12))
    projection = LanguageProjection(12, DIM)
    out = projection(embeddings)
    assert out.tokens.shape == (2, 3, DIM) and out.sentence.shape == (2, DIM)
    assert torch.equal(out.mask, mask)
    assert (out.tokens[~mask] == 0).all()
    # a weighted sum: the plain sum of a LayerNorm's output has (almost) zero gradient upstream
    g = torch.Generator().manual_seed(0)
    weights_tokens, weights_sentence = (
        torch.randn(out.tokens.shape, generator=g),
        torch.randn(2, DIM, generator=g),
    )
    ((out.tokens * weights_tokens).sum() + (out.sentence * weights_sentence).sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in projection.parameters())


def test_box_and_point_masks() -> None:
    boxes = torch.tensor([[10.0, 5.0, 20.0, 8.0], [0.0, 0.0, 0.2, 0.2]])
    masks = boxes_to_masks(boxes, (H, W))
    assert masks.shape == (2, H, W)
    assert masks[0].sum() == 10 * 3 and masks[0, 5:8, 10:20].all()
    assert not masks[1].any()  # no pixel centre inside
    points = torch.tensor([[[30.5, 20.5], [0.0, 0.0]]])
    disks = points_to_masks(points, (H, W), radius=1.0, valid=torch.tensor([[True, False]]))
    assert disks[0, 20, 30] and disks[0].sum() == 5 and not disks[0, 0, 0]


def test_positive_points_inside_negatives_outside() -> None:
    masks = _masks()
    g = torch.Generator().manual_seed(0)
    points = sample_prompt_points(masks, num_points=8, num_negative=4, generator=g)
    assert points.points.shape == (3, 12, 2)
    assert points.positive[:, :8].all() and not points.positive[:, 8:].any()
    assert points.valid[:2].all()
    assert points.valid[2].sum() == 5 and points.valid[2, 0] and points.valid[2, 8:].all()

    # read the coordinates back through feature maps that encode them (full resolution, then stride 4)
    batch_index = torch.tensor([1, 0, 1])
    for h, w in ((H, W), (H // 4, W // 4)):
        sampled = sample_features([_coordinate_map(h, w)], points.points, batch_index)
        assert sampled.shape == (3, 12, DIM)
        assert torch.allclose(sampled[..., 2], batch_index[:, None].float().expand(3, 12))
        # away from the outer half cell, where grid_sample clamps to the border
        cells = points.points * torch.tensor([w, h])
        interior = ((cells > 0.5) & (cells < torch.tensor([w, h]) - 0.5)).all(-1)
        assert torch.allclose(sampled[..., :2][interior], points.points[interior], atol=1e-5)
    sampled = sample_features([_coordinate_map(H, W)], points.points, batch_index)
    cols = (sampled[..., 0] * W).floor().long().clamp(0, W - 1)
    rows = (sampled[..., 1] * H).floor().long().clamp(0, H - 1)
    inside = masks[torch.arange(3)[:, None], rows, cols]
    valid = points.valid
    assert inside[valid & points.positive].all()
    assert not inside[valid & ~points.positive].any()
    # distinct pixels per prompt (sampling without replacement)
    flat = rows * W + cols
    for n in range(2):
        assert flat[n, :8].unique().numel() == 8


def test_mask_points_are_distinct_pixel_centres_of_the_mask_up_to_each_count() -> None:
    masks = _masks()
    g = torch.Generator().manual_seed(0)
    points, valid = sample_mask_points(masks, torch.tensor([8, 300, 4]), generator=g)
    # prompt 1 has 20*10 + 4*6 = 224 pixels: K is what the masks can give, not what was asked
    assert points.shape == (3, 224, 2) and valid.shape == (3, 224)
    assert valid.sum(dim=1).tolist() == [8, 224, 1]
    cells = points * torch.tensor([W, H])
    assert torch.equal(cells - 0.5, (cells - 0.5).round())  # pixel centres
    cols, rows = (cells - 0.5).long().unbind(-1)
    inside = masks[torch.arange(3)[:, None], rows.clamp(0, H - 1), cols.clamp(0, W - 1)]
    assert inside[valid].all()
    flat = rows * W + cols
    assert flat[1].unique().numel() == 224  # without replacement
    again, _ = sample_mask_points(
        masks, torch.tensor([8, 300, 4]), generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(again, points)
    empty, none = sample_mask_points(masks[:0], torch.zeros(0, dtype=torch.long))
    assert empty.shape == (0, 0, 2) and none.shape == (0, 0)


def test_more_points_than_pixels_give_invalid_points() -> None:
    points = sample_prompt_points(torch.ones(1, 2, 2, dtype=torch.bool), 6, 1)
    assert points.valid[0, :4].all() and not points.valid[0, 4:].any()
