"""Overlay PNGs of the first test images of a dataset, for people to look at (and for W&B).

:class:`OverlaySink` receives a test dataset's batches and predictions and draws, for its first
``limit`` images, the predicted masks over the image (:func:`~findlit.outputs.overlay.save_overlay`):

what the dataset's task's ``overlay_layers`` picks of each prediction (findlit's tasks: the panoptic
segments or instances for segmentation, each sentence's or phrase's mask for grounding and
interleave; nothing for retrieval).

Overlays are drawn at the image's size on disk: the image file of the dataset's record is read
again (so datasets read from a feature cache, whose batches hold no pixels, get overlays too) and
the masks are resized to it with nearest-neighbour sampling, as the standard-format predictions
are. When the file cannot be read the batch's own pixels are used, at the transformed size; a
cached-feature batch without a readable file gets no overlay (with a warning).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from findlit.data.decode import read_image
from findlit.errors import DataError
from findlit.nearest_resize import resize_nearest
from findlit.outputs.overlay import LABEL_CHARS, OverlayLayers, save_overlay, shorten

__all__ = [
    "LABEL_CHARS",
    "OVERLAYS_FOLDER",
    "OverlayLayersFn",
    "OverlaySink",
    "log_overlays_to_wandb",
    "shorten",
]

OVERLAYS_FOLDER = "overlays"
"""Folder of the overlays (one subfolder per test dataset), in the results directory."""

OverlayLayersFn = Callable[[Mapping[str, Any], Sequence[str]], OverlayLayers | None]
"""One image's prediction (at the transformed size) and the class names -> what to draw, or None:
a task's :meth:`~findlit.tasks.base.Task.overlay_layers`."""


class OverlaySink:
    """Overlays of the first ``limit`` images of one test dataset, in the order they are given.

    ``written`` lists ``(path, caption)`` of each overlay; an existing file is never overwritten.

    Args:
        folder: where the PNGs go, ``<stem>.png`` by the image file's stem (``<stem>_<image id>``
            when two images of the dataset share a stem).
        dataset: the test dataset (``records`` with each image's file).
        class_names: class index -> name (the model's vocabulary of the dataset).
        limit: how many images get an overlay.
        layers: what to draw of a prediction (the dataset's task's ``overlay_layers``); an image it
            gives None gets no overlay.

    """

    def __init__(
        self, folder: Path, dataset: Any, class_names: Sequence[str], limit: int, layers: OverlayLayersFn
    ):
        self.folder = folder
        self.layers = layers
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
            layers = self.layers(prediction, self.class_names)
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
