"""Overlay PNGs of the first test images of a dataset, for people to look at (and for W&B).

:class:`OverlaySink` receives a test dataset's batches and predictions and draws, for its first
``limit`` images, the predicted masks over the image (:func:`~findlit.outputs.overlay.save_overlay`):

- segmentation: the panoptic segments (else the instances) labelled with class names and scores;
- grounding: each sentence's mask, labelled with the sentence (shortened) and its score;
- interleave: each phrase's mask and its score.

Retrieval predicts no masks and gets no overlays.

Overlays are drawn at the image's size on disk: the image file of the dataset's record is read
again (so datasets read from a feature cache, whose batches hold no pixels, get overlays too) and
the masks are resized to it with nearest-neighbour sampling, as the standard-format predictions
are. When the file cannot be read the batch's own pixels are used, at the transformed size; a
cached-feature batch without a readable file gets no overlay (with a warning).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from findlit.data.decode import read_image
from findlit.errors import DataError
from findlit.nearest_resize import resize_nearest
from findlit.outputs.overlay import save_overlay

OVERLAYS_FOLDER = "overlays"
"""Folder of the overlays (one subfolder per test dataset), in the results directory."""

LABEL_CHARS = 32
"""Longest label written on an overlay; longer sentences are cut with an ellipsis."""


def shorten(text: str, limit: int = LABEL_CHARS) -> str:
    """``text`` on one line, cut at a word boundary to at most ``limit`` characters (ellipsis included)."""
    line = " ".join(text.split())
    if len(line) <= limit:
        return line
    cut = line[: limit - 1]
    if " " in cut:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(" ,;:") + "…"


def overlay_layers(
    task: str, prediction: Mapping[str, Any], class_names: Sequence[str]
) -> tuple[Tensor, list[str], list[float]] | None:
    """The masks bool[N,h,w], labels and scores to draw of one image's prediction, or None.

    ``prediction`` is one entry of ``FINDModule.test_step``'s list, at the transformed size (h, w).
    Segmentation draws the panoptic segments when predicted, else the instances; retrieval (and any
    prediction without masks) gives None.
    """
    if task == "segmentation":
        if "panoptic" in prediction:
            segment_ids, segments = prediction["panoptic"]
            ids = torch.tensor([int(s["id"]) for s in segments], dtype=torch.int64)
            masks = segment_ids.cpu()[None] == ids[:, None, None]  # [N,h,w]
            labels = [_class_name(class_names, int(s["category"])) for s in segments]
            return masks, labels, [float(s["score"]) for s in segments]
        if "instance" in prediction:
            instance = prediction["instance"]
            labels = [_class_name(class_names, int(c)) for c in instance["labels"].tolist()]
            return instance["masks"].cpu().bool(), labels, instance["scores"].float().cpu().tolist()
        return None
    texts = {"grounding": "sentences", "interleave": "phrases"}.get(task)
    if texts is None or "masks" not in prediction:
        return None
    labels = [shorten(str(text)) for text in prediction[texts]]
    return prediction["masks"].cpu().bool(), labels, prediction["scores"].float().cpu().tolist()


def _class_name(class_names: Sequence[str], index: int) -> str:
    return class_names[index] if 0 <= index < len(class_names) else f"class {index}"


class OverlaySink:
    """Overlays of the first ``limit`` images of one test dataset, in the order they are given.

    ``written`` lists ``(path, caption)`` of each overlay; an existing file is never overwritten.

    Args:
        folder: where the PNGs go, ``<stem>.png`` by the image file's stem (``<stem>_<image id>``
            when two images of the dataset share a stem).
        dataset: the test dataset (``task``, ``records`` with each image's file).
        class_names: class index -> name (the model's vocabulary of the dataset).
        limit: how many images get an overlay.

    """

    def __init__(self, folder: Path, dataset: Any, class_names: Sequence[str], limit: int):
        self.folder = folder
        self.task = str(dataset.task)
        self.images = {int(r.image.id): r.image for r in getattr(dataset, "records", ())}
        self.class_names = list(class_names)
        self.limit = limit
        self.written: list[tuple[Path, str]] = []
        self._stems: set[str] = set()
        self._warned = False

    def add(self, predictions: Sequence[Mapping[str, Any]], batch: Mapping[str, Any]) -> None:
        """Draw the overlays of the batch's images, until ``limit`` are written."""
        for b, prediction in enumerate(predictions):
            if len(self.written) >= self.limit:
                return
            layers = overlay_layers(self.task, prediction, self.class_names)
            if layers is None:
                continue
            image_id = int(batch["image_ids"][b])
            image = self._pixels(image_id, batch, b)
            if image is None:
                continue
            masks, labels, scores = layers
            masks = resize_nearest(masks, image.shape[-2:])
            path = self._path(image_id)
            if path.exists():
                raise FileExistsError(f"{path} exists; not overwriting an earlier overlay")
            save_overlay(path, image, masks, labels, scores)
            self.written.append((path, f"{path.stem}: {len(labels)} masks"))

    def _pixels(self, image_id: int, batch: Mapping[str, Any], b: int) -> Tensor | None:
        """uint8[3,H,W]: the file on disk, else the batch's image at the transformed size, else None."""
        info = self.images.get(image_id)
        if info is not None:
            try:
                return read_image(info)
            except DataError as error:
                problem = str(error)
        else:
            problem = f"image_id={image_id} is not in the dataset's records"
        if not self._warned:
            self._warned = True
            rank_zero_warn(f"overlays of {self.folder.name}: {problem}; using the batch's pixels")
        if "images" not in batch:  # a feature cache: no pixels in the batch
            return None
        h, w = (int(n) for n in batch["image_sizes"][b])
        return batch["images"][b, :, :h, :w].cpu()  # the image sits at the top left of its frame

    def _path(self, image_id: int) -> Path:
        info = self.images.get(image_id)
        stem = info.path.stem if info is not None else f"{image_id:012d}"
        if stem in self._stems:
            stem = f"{stem}_{image_id}"
        self._stems.add(stem)
        return self.folder / f"{stem}.png"


def log_overlays_to_wandb(loggers: Sequence[Any], key: str, written: Sequence[tuple[Path, str]]) -> int:
    """Log the overlays' files with every :class:`WandbLogger` among ``loggers``; how many loggers did.

    ``WandbLogger`` is imported here, not at module level, so that runs without W&B never touch it
    (Lightning itself imports ``wandb`` only when a ``WandbLogger`` is created).
    """
    if not written:
        return 0
    from lightning.pytorch.loggers import WandbLogger

    count = 0
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[str(p) for p, _ in written], caption=[c for _, c in written])
            count += 1
    return count
