"""The one nearest resize: pixel centres mapped to pixel centres (torch's ``nearest-exact``), exact
values of any dtype, crops that equal slices of the full resize."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from findlit.nearest_resize import nearest_indices, resize_nearest

SIZES = (1, 2, 3, 5, 7, 8, 33, 64, 96, 100, 128, 205, 427, 480, 640)


def test_indices_map_output_centres_to_input_centres() -> None:
    for n_in in SIZES:
        for n_out in SIZES:
            expected = [min(int((i + Fraction(1, 2)) * n_in / n_out), n_in - 1) for i in range(n_out)]
            assert nearest_indices(n_in, n_out).tolist() == expected, (n_in, n_out)


def _interpolated(n_in: int, n_out: int) -> torch.Tensor:
    """The index torch's nearest-exact picks (computed in float32)."""
    line = torch.arange(n_in, dtype=torch.float32).reshape(1, 1, n_in, 1)
    return F.interpolate(line, size=(n_out, 1), mode="nearest-exact").flatten().long()


def test_indices_are_torchs_nearest_exact_up_to_float32_ties() -> None:
    # torch computes (i + 0.5) * n_in / n_out in float32: where that is exactly an integer (a tie
    # between two input pixels) it may land just below and take the pixel before; nowhere else.
    differing = total = 0
    for n_in in SIZES:
        for n_out in SIZES:
            total += n_out
            ours, theirs = nearest_indices(n_in, n_out), _interpolated(n_in, n_out)
            for i in torch.nonzero(ours != theirs).flatten().tolist():
                assert (2 * i + 1) * n_in % (2 * n_out) == 0, (n_in, n_out, i)
                assert int(theirs[i]) == int(ours[i]) - 1
                differing += 1
    assert differing <= 0.001 * total


@pytest.mark.parametrize(
    ("size", "out_size"),
    [
        ((96, 128), (427, 640)),
        ((427, 640), (96, 128)),
        ((99, 150), (33, 50)),
        ((7, 5), (64, 48)),
        ((64, 48), (1, 1)),
    ],
)
def test_resize_equals_nearest_exact_up_and_down(size: tuple[int, int], out_size: tuple[int, int]) -> None:
    ids = torch.arange(size[0] * size[1]).reshape(1, *size)
    expected = F.interpolate(ids[None].float(), size=out_size, mode="nearest-exact")[0].long()
    assert torch.equal(resize_nearest(ids, out_size), expected)


def test_values_of_any_dtype_are_kept_exactly() -> None:
    # ids above 2**24 have no exact float32: an interpolation through float would change them
    ids = torch.randint(2**24, 2**40, (2, 5, 7), generator=torch.Generator().manual_seed(0))
    resized = resize_nearest(ids, (11, 3))
    rows, cols = nearest_indices(5, 11), nearest_indices(7, 3)
    assert resized.dtype == torch.int64 and torch.equal(resized, ids[:, rows[:, None], cols[None, :]])
    masks = ids % 2 == 0
    assert torch.equal(resize_nearest(masks, (11, 3)), resized % 2 == 0)
    assert resize_nearest(masks, (11, 3)).dtype == torch.bool
    assert torch.equal(resize_nearest(masks[0], (11, 3)), resized[0] % 2 == 0)
    assert resize_nearest(masks, (5, 7)) is masks
    assert resize_nearest(masks[:0], (11, 3)).shape == (0, 11, 3)


@pytest.mark.parametrize("out_size", [(5, 90), (90, 5), (30, 40), (1, 1)])
@pytest.mark.parametrize("n", [0, 1, 3])
def test_crops_are_slices_of_the_full_resize(out_size: tuple[int, int], n: int) -> None:
    masks = torch.rand(n, 20, 30, generator=torch.Generator().manual_seed(n)) > 0.5
    full = resize_nearest(masks, out_size)
    rows, cols = nearest_indices(20, out_size[0]), nearest_indices(30, out_size[1])
    assert torch.equal(full, masks[:, rows[:, None], cols[None, :]])
    height, width = out_size
    crop = (height // 3, width // 4, height - height // 3, width // 2 or 1)
    top, left, crop_h, crop_w = crop
    expected = full[:, top : top + crop_h, left : left + crop_w]
    assert torch.equal(resize_nearest(masks, out_size, crop), expected)
    # a crop of an unresized tensor is just the slice
    assert torch.equal(resize_nearest(masks, (20, 30), (1, 2, 3, 4)), masks[:, 1:4, 2:6])
