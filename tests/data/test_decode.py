"""Panoptic PNG ids: PIL's packed read equals the R + 256 G + 256^2 B formula, for every mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from findlit.data.decode import read_panoptic_ids, rgb_to_ids
from findlit.errors import DataError


def formula(rgb: np.ndarray) -> np.ndarray:
    channels = rgb.astype(np.int64)
    return channels[..., 0] + 256 * channels[..., 1] + 256 * 256 * channels[..., 2]


def test_rgb_png_ids_are_the_coco_formula(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 255, 255)  # the largest id, 2^24 - 1
    Image.fromarray(rgb).save(tmp_path / "pan.png")
    ids = read_panoptic_ids(tmp_path / "pan.png")
    assert ids.dtype == np.int64 and ids.shape == (37, 53)
    np.testing.assert_array_equal(ids, formula(rgb))
    assert ids[0, 0] == 2**24 - 1
    np.testing.assert_array_equal(rgb_to_ids(rgb), formula(rgb))


def test_other_modes_are_read_as_their_rgb(tmp_path: Path) -> None:
    grey = np.arange(12 * 7, dtype=np.uint8).reshape(12, 7)
    Image.fromarray(grey, mode="L").save(tmp_path / "grey.png")
    # a greyscale PNG is the RGB (v, v, v)
    np.testing.assert_array_equal(read_panoptic_ids(tmp_path / "grey.png"), formula(np.stack([grey] * 3, -1)))


def test_a_missing_png_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"image file not found.*ghost\.png"):
        read_panoptic_ids(tmp_path / "ghost.png", "image_id=1")
