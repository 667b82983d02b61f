from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from findlit.outputs.overlay import draw_overlay, mask_colour, rle_json, save_overlay

HEIGHT, WIDTH = 96, 160


def _image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(40, 200, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)


def _masks() -> np.ndarray:
    masks = np.zeros((2, HEIGHT, WIDTH), dtype=bool)
    masks[0, 10:60, 10:90] = True
    masks[1, 50:90, 100:150] = True
    return masks


def test_tint_inside_masks_and_nothing_outside() -> None:
    image, masks = _image(), _masks()
    out = np.asarray(
        draw_overlay(torch.from_numpy(image).permute(2, 0, 1), masks, ["cat", "rug"], [0.87, 0.5])
    )
    assert out.shape == image.shape and out.dtype == np.uint8

    # Away from the labels (drawn near the centroids), masks are tinted toward their colour.
    for index, (top, left) in enumerate([(14, 14), (54, 104)]):
        colour = np.array(mask_colour(index), dtype=np.float64)
        before = image[top : top + 5, left : left + 5].astype(np.float64)
        after = out[top : top + 5, left : left + 5].astype(np.float64)
        np.testing.assert_allclose(after, 0.5 * before + 0.5 * colour, atol=1)
        assert np.abs(after - colour).sum() < np.abs(before - colour).sum()

    outside = ~masks.any(axis=0)
    outside[24:46, :] = False  # rows of the first label, which may spill over its mask
    outside[58:82, :] = False  # rows of the second label
    np.testing.assert_array_equal(out[outside], image[outside])


def test_boundaries_and_labels_are_drawn() -> None:
    image, masks = _image(), _masks()
    plain = np.asarray(draw_overlay(image, masks, ["cat", "rug"], None, alpha=0.0))
    # alpha 0: no tint, so the only changes are the outlines and the labels.
    assert tuple(plain[10, 40]) == mask_colour(0)  # top edge of mask 0
    assert tuple(plain[89, 120]) == mask_colour(1)  # bottom edge of mask 1
    np.testing.assert_array_equal(plain[20:25, 20:25], image[20:25, 20:25])
    for centre_row, centre_column in [(35, 50), (70, 125)]:
        window = (slice(centre_row - 4, centre_row + 5), slice(centre_column - 8, centre_column + 9))
        assert (plain[window] != image[window]).any(axis=-1).sum() > 20


def test_scores_change_the_label() -> None:
    image, masks = _image(), _masks()
    with_scores = np.asarray(draw_overlay(image, masks, ["cat", "rug"], [0.87, 0.5]))
    without = np.asarray(draw_overlay(image, masks, ["cat", "rug"]))
    assert (with_scores != without).any()


def test_empty_and_channel_layouts() -> None:
    image = _image()
    empty = draw_overlay(image, np.zeros((0, HEIGHT, WIDTH), dtype=bool), [], [])
    assert empty.size == (WIDTH, HEIGHT)
    np.testing.assert_array_equal(np.asarray(empty), image)
    chw = draw_overlay(np.ascontiguousarray(image.transpose(2, 0, 1)), _masks(), ["a", "b"])
    hwc = draw_overlay(image, _masks(), ["a", "b"])
    np.testing.assert_array_equal(np.asarray(chw), np.asarray(hwc))
    with pytest.raises(ValueError, match="labels"):
        draw_overlay(image, _masks(), ["a"])
    with pytest.raises(ValueError, match="masks are"):
        draw_overlay(image, np.zeros((1, 4, 4), dtype=bool), ["a"])


def test_colours_are_distinct_and_deterministic() -> None:
    colours = [mask_colour(i) for i in range(20)]
    assert len(set(colours)) == 20
    assert colours == [mask_colour(i) for i in range(20)]


def test_save_overlay(tmp_path: Path) -> None:
    path = save_overlay(tmp_path / "out" / "overlay.png", _image(), _masks(), ["cat", "rug"], [0.9, 0.1])
    assert [p.name for p in path.parent.iterdir()] == ["overlay.png"]
    with Image.open(path) as saved:
        assert saved.format == "PNG" and saved.size == (WIDTH, HEIGHT)


def test_rle_json_round_trip() -> None:
    masks = _masks()
    entries = rle_json(torch.from_numpy(masks), ["cat", "rug"], [0.87, 0.5])
    assert [e["label"] for e in entries] == ["cat", "rug"]
    assert [e["score"] for e in entries] == [0.87, 0.5]
    assert entries[0]["area"] == 50 * 80 and entries[0]["bbox"] == [10.0, 10.0, 80.0, 50.0]
    for entry, mask in zip(entries, masks, strict=True):
        rle = {"size": entry["segmentation"]["size"], "counts": entry["segmentation"]["counts"].encode()}
        np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), mask)
    assert rle_json(np.zeros((0, 4, 4), dtype=bool), [], None) == []
    assert rle_json(masks, ["a", "b"])[0]["score"] is None
