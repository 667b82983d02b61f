import pytest
import torch

from findlit.losses.points import DEFAULT_NUM_POINTS, point_sample, uncertain_points


def test_default_is_112_squared() -> None:
    assert DEFAULT_NUM_POINTS == 12544


def test_point_sample_reads_pixel_centres_and_interpolates() -> None:
    image = torch.arange(12.0).reshape(1, 1, 3, 4)  # value = 4 * row + col
    # pixel (row, col) has its centre at ((col + 0.5) / W, (row + 0.5) / H) with align_corners=False
    centres = torch.tensor([[[(c + 0.5) / 4, (r + 0.5) / 3] for r in range(3) for c in range(4)]])
    assert torch.allclose(point_sample(image, centres), image.reshape(1, 1, 12), atol=1e-5)
    between = torch.tensor([[[1.0 / 4, 0.5 / 3], [0.5 / 4, 1.0 / 3]]])  # halfway right, halfway down
    assert torch.allclose(point_sample(image, between), torch.tensor([[[0.5, 2.0]]]), atol=1e-5)


def test_point_sample_channels_and_bool_inputs() -> None:
    masks = torch.zeros(2, 3, 8, 8, dtype=torch.bool)
    masks[0, 1, :4, :] = True  # top half of channel 1 of image 0
    coords = torch.tensor([[[0.5, 0.2], [0.5, 0.8]], [[0.5, 0.2], [0.5, 0.8]]])
    values = point_sample(masks, coords)
    assert values.shape == (2, 3, 2) and values.dtype == torch.float32
    assert values[0, 1].tolist() == [1.0, 0.0]
    assert values.sum() == 1.0


def test_point_sample_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="coords"):
        point_sample(torch.zeros(2, 1, 4, 4), torch.zeros(1, 5, 2))


def _disc_logits(size: int = 64) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    radius = ((xs - 0.5) ** 2 + (ys - 0.5) ** 2).sqrt()
    return (20 * (0.3 - radius))[None, None]  # logit 0 on the circle of radius 0.3


def test_uncertain_points_concentrate_on_the_boundary() -> None:
    generator = torch.Generator().manual_seed(0)
    coords = uncertain_points(_disc_logits(), 1000, 3.0, 0.75, generator=generator)
    assert coords.shape == (1, 1000, 2)
    assert coords.min() >= 0 and coords.max() <= 1
    distance = ((coords[0] - 0.5).norm(dim=-1) - 0.3).abs()
    important, uniform = distance[:750], distance[750:]
    # a quarter of the uniform candidates lie within ~0.066 of the circle (band area 2*pi*0.3*2d)
    assert important.max() < 0.08
    assert uniform.mean() > 3 * important.mean()


def test_uncertain_points_deterministic_with_a_generator() -> None:
    logits = torch.randn(3, 1, 16, 16)
    a = uncertain_points(logits, 50, generator=torch.Generator().manual_seed(7))
    b = uncertain_points(logits, 50, generator=torch.Generator().manual_seed(7))
    c = uncertain_points(logits, 50, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_uncertain_points_ratios() -> None:
    logits = torch.randn(2, 1, 8, 8)
    assert uncertain_points(logits, 10, 1.0, 1.0).shape == (2, 10, 2)
    assert uncertain_points(logits, 10, 3.0, 0.0).shape == (2, 10, 2)
    with pytest.raises(ValueError, match="oversample_ratio"):
        uncertain_points(logits, 10, 0.5, 0.75)
    with pytest.raises(ValueError, match=r"\[N,1,H,W\]"):
        uncertain_points(torch.randn(2, 3, 8, 8), 10)


def test_point_sample_under_bf16_autocast() -> None:
    logits = torch.randn(2, 1, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        coords = uncertain_points(logits.bfloat16(), 20)
        values = point_sample(logits.bfloat16(), coords)
    assert values.shape == (2, 1, 20)
