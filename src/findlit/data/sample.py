"""The per-image sample that datasets produce, transforms modify and collate batches.

A sample is a plain dict so that DataLoader workers can pickle it cheaply; this TypedDict
documents the keys and shapes. Which keys are present depends on the task:

- every task: ``task``, ``dataset``, ``image_id``, ``orig_size``, and either ``image`` or, for a
  dataset read from a feature cache, ``features``, ``image_size`` and ``padding_mask``; from a
  :class:`~findlit.data.datasets.TaskDataset` also ``seed``;
- segmentation: ``masks``, ``labels``, ``is_thing``, ``ignore_mask``;
- retrieval: ``captions``;
- grounding: ``masks`` (one per referred object), ``sentences``, ``sentence_targets``;
- interleave: ``masks`` (the segments the phrases point at), ``entities``; in evaluation from
  images (not a feature cache) also ``reference_images``, per phrase (sentences, then spans) its
  :class:`ReferenceImage` or None;
- predict (image files, :mod:`findlit.data.predict_dataset`): ``file`` and ``pixels``;
- evaluation (a dataset not in training) with masks: ``original``, the targets at ``orig_size``
  before any transform (:class:`OriginalTargets`), which the metrics score against, as the
  official COCO tools score the files ``findlit test`` writes.
"""

from __future__ import annotations

from typing import TypedDict

import numpy as np
from torch import Tensor


class EntityPrompt(TypedDict):
    """One entity sentence of an interleave sample.

    ``spans[k] = (start, end)`` are character offsets of phrase k in ``sentence``;
    ``targets[k]`` indexes the sample's ``masks``; ``references[k]`` is ``(image_id, segment_id)``
    of the same thing in another image, or None.
    """

    sentence: str
    spans: list[tuple[int, int]]
    targets: list[int]
    references: list[tuple[int, int] | None]


class ReferenceImage(TypedDict):
    """The segment an interleave phrase refers to in another image, resized as the sample's image.

    image: uint8[3,h,w]; mask: bool[h,w], the referenced segment.
    """

    image: Tensor
    mask: Tensor


class OriginalTargets(TypedDict, total=False):
    """An evaluation sample's targets as decoded, at the image's size on disk (H0 x W0).

    masks: bool[N,H0,W0] in the order of the decoded record (before the transforms, and before a
    segmentation dataset drops the masks a resize emptied); labels: int64[N]; ignore_mask:
    bool[H0,W0] (segmentation); iscrowd: int64[N] (a plugin's crowd flags, when its samples have
    them). Predictions are resized to H0 x W0 to be scored against them.
    """

    masks: Tensor
    labels: Tensor
    ignore_mask: Tensor
    iscrowd: Tensor


class Sample(TypedDict, total=False):
    """One image and its targets. Shapes: N segments, S sentences, image H x W.

    image: uint8[3,H,W] (RGB; the encoders normalise).
    masks: bool[N,H,W]. labels: int64[N], indices into the dataset's ``class_names``. is_thing: bool[N].
    ignore_mask: bool[H,W], True on crowd and unlabelled pixels.
    sentence_targets: int64[S], index into ``masks`` for each sentence.
    orig_size: (height, width) of the image on disk, before transforms.
    seed: the sample's seed (non-negative, < 2**63): the sampler's per-sample seed in training, the
    record index in evaluation. It seeded the sample's augmentation and seeds its random points in
    the losses, so those follow the sample, not the rank or the batch it lands in.

    frame: (height, width) that a batch holding this sample is padded to at least. Set by
    large-scale jitter (its ``image_size`` square, detectron2's ``FixedSizeCrop(pad=True)``), so a
    crop's padded frame, and with it the encoder's view of the image's borders and the losses'
    normalised points, does not depend on which other crops share its batch or its rank.

    From a feature cache (instead of ``image``): features: level (``res2``..``res5``) ->
    float16[C_l,H/s_l,W/s_l] (the cache dtype), computed from the image resized to ``image_size``
    (h, w) and padded to H x W; padding_mask: bool[H,W], True on the padding (on the left after a
    flip). Targets are then in the H x W frame too.

    Prediction samples (task ``predict``): file: the image file's path; pixels: uint8[3,H0,W0], the
    image at its ``orig_size`` as a NumPy array (it stays on the CPU when Lightning moves a batch).
    """

    task: str
    dataset: str
    image_id: int
    seed: int
    image: Tensor
    orig_size: tuple[int, int]
    masks: Tensor
    labels: Tensor
    is_thing: Tensor
    ignore_mask: Tensor
    captions: list[str]
    sentences: list[str]
    sentence_targets: Tensor
    entities: list[EntityPrompt]
    reference_images: list[ReferenceImage | None]
    features: dict[str, Tensor]
    image_size: tuple[int, int]
    padding_mask: Tensor
    frame: tuple[int, int]
    file: str
    pixels: np.ndarray
    original: OriginalTargets
