"""Image files as prediction samples and batches (of ``data.predict``, and of the Predictor).

A prediction sample is an evaluation sample without targets: the image resized as in evaluation,
plus what the outputs need later, in the image's own frame: ``file`` (its path) and ``pixels``
(the decoded image). ``pixels`` is a NumPy array on purpose: Lightning moves a batch's tensors to
the model's device, and the full-size image is only needed back on the CPU, for overlays.
A batch of them (:func:`collate_predict`) also carries the :class:`PredictRequest` of its dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset as TorchDataset

from findlit.data.collate import Batch, collate_samples
from findlit.data.decode import read_rgb
from findlit.data.predict_config import (
    DEFAULT_IMAGE_SIZE,
    PredictConfig,
    PredictRequest,
    check_predict_config,
    image_files,
)
from findlit.data.sample import Sample
from findlit.data.transforms import Resize

PREDICT_TASK = "predict"
"""``task`` of prediction samples and batches: each request may need several model tasks."""


def read_upright_image(path: str | Path, key: str | None = None) -> Tensor:
    """uint8[3,H,W] RGB of an image file, turned upright by its EXIF orientation (as it is shown).

    Raises:
        DataError: a missing or unreadable file, naming it (and ``key``, the config key behind it).

    """
    pixels = read_rgb(path, key=key, upright=True)
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


def prediction_sample(
    pixels: Tensor, file: str | Path, dataset: str, index: int, resize: Resize, pad_to_square: bool
) -> Sample:
    """One image, resized by ``resize``, as a :class:`Sample` of task ``predict``.

    Args:
        pixels: uint8[3,H,W], the image as shown.
        file: its path (kept as ``file``, for the output names).
        dataset: the name put in the sample (the vocabulary of its class names is registered under it).
        index: its position in the dataset (``image_id`` and ``seed``).
        resize: the evaluation resize.
        pad_to_square: pad the batch to at least ``resize.longest_edge`` squared (the sample's
            ``frame``), so that the image's padded frame does not depend on its batch.

    Returns:
        ``image`` uint8[3,h,w] resized, ``orig_size`` (H, W), ``file``, ``pixels`` uint8[3,H,W] as a
        NumPy array (a view of ``pixels``), and ``frame`` when padded to a square.

    """
    sample: Sample = {
        "task": PREDICT_TASK,
        "dataset": dataset,
        "image_id": index,
        "seed": index,
        "image": pixels,
        "orig_size": (int(pixels.shape[-2]), int(pixels.shape[-1])),
        "file": str(file),
        "pixels": pixels.numpy(),
    }
    sample = resize(sample, torch.Generator())
    if pad_to_square and resize.longest_edge is not None:
        sample["frame"] = (resize.longest_edge, resize.longest_edge)
    return sample


def collate_predict(samples: Sequence[Sample], request: PredictRequest, size_divisibility: int = 32) -> Batch:
    """:func:`~findlit.data.collate.collate_samples`, plus the ``request`` every image of the batch serves.

    Each image's ``file`` and ``pixels`` are in its ``targets`` entry.
    """
    batch = collate_samples(samples, size_divisibility)
    batch["request"] = request
    return batch


class PredictDataset(TorchDataset[Sample]):
    """The images of one ``data.predict`` entry as prediction samples (see :func:`prediction_sample`).

    Args:
        name: the entry's name.
        files: the image files.
        request: what to predict on them.
        resize: the evaluation resize.
        pad_to_square: see :func:`prediction_sample`.
        key: the entry's config key, for messages.

    """

    task = PREDICT_TASK

    def __init__(
        self,
        name: str,
        files: Sequence[Path],
        request: PredictRequest,
        resize: Resize,
        pad_to_square: bool = True,
        key: str | None = None,
    ):
        self.name = name
        self.files = list(files)
        self.request = request
        self.resize = resize
        self.pad_to_square = pad_to_square
        self.key = key

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Sample:
        file = self.files[index]
        pixels = read_upright_image(file, None if self.key is None else f"{self.key}.images")
        return prediction_sample(pixels, file, self.name, index, self.resize, self.pad_to_square)


def build_predict_dataset(
    config: PredictConfig,
    key: str,
    root: str | Path | None = None,
    default_resize: tuple[int | None, int | None] = (None, None),
) -> PredictDataset:
    """Check an entry and list its images (nothing is decoded yet).

    Args:
        config: the entry.
        key: its config key, e.g. ``data.predict[0]``.
        root: ``data.root``.
        default_resize: (image_size, eval_shortest_edge) used when the entry sets no ``image_size``
            (see :func:`~findlit.data.predict_config.evaluation_resize`); 1024 when None.

    Raises:
        ConfigError: naming the key of what is wrong.

    """
    check_predict_config(config, key)
    files = image_files(config, key, root)
    if config.image_size is not None:
        size, shortest = config.image_size, config.eval_shortest_edge
    else:
        size = default_resize[0] or DEFAULT_IMAGE_SIZE
        shortest = config.eval_shortest_edge if config.eval_shortest_edge is not None else default_resize[1]
    resize = Resize(shortest_edge=shortest, longest_edge=size)
    request = config.request(key, root)
    return PredictDataset(config.name, files, request, resize, config.pad_to_square, key)
