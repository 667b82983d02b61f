"""Inference on image files with free-text prompts, class names, clicks and boxes: :class:`Predictor`.

``Predictor.from_checkpoint(path)`` rebuilds a :class:`~findlit.training.module.FINDModule` (refusing a
checkpoint of other encoders) and predicts, for each image:

- one mask per free-text prompt (a referring expression), with the grounding task's score;
- optionally, segments of a vocabulary made on the fly from class names (thing classes, plus
  ``stuff`` names), with the segmentation task's panoptic or instance inference;
- one mask for a set of clicks (positive and negative, one object) and one per box, with the
  interactive task. :meth:`Predictor.set_image` computes an image's features once; then any
  number of :meth:`Predictor.predict` calls without an image reuse them (SAM's predictor's way).

Images are resized as in evaluation (longest side ``image_size``, the training config's when the
checkpoint tells it) and padded to a square; masks come back at the image's own size (after its
EXIF orientation, i.e. as the photo is shown). :meth:`Predictor.write` saves ``<out>/<stem>.png``
(overlay with labels and scores) and ``<out>/<stem>.json`` (COCO compressed RLE masks, labels,
scores, image size) per image, after checking every input and output path, so a bad request fails
before any work.

The inference itself is :func:`~findlit.tasks.requests.predict_batch`, which ``findlit predict
--config`` (LightningCLI's predict, :meth:`FINDModule.predict_step
<findlit.training.module.FINDModule.predict_step>`) runs too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor

from findlit.data.collate import collate_samples
from findlit.data.predict_config import (
    DEFAULT_IMAGE_SIZE,
    PredictRequest,
    SegmentationMode,
    evaluation_resize,
    read_scribble,
    request_problem,
    shared_stems,
)
from findlit.data.predict_dataset import prediction_sample, read_upright_image
from findlit.data.transforms import Resize
from findlit.encoders.checkpoint import EncoderMismatchError
from findlit.errors import ConfigError, DataError
from findlit.outputs.overlay import output_paths, refuse_existing
from findlit.tasks.requests import Prediction, capability_problem, predict_batch
from findlit.training.checkpoint_io import read_lightning_checkpoint
from findlit.training.module import FINDModule, checkpoint_overrides

__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "PredictError",
    "Prediction",
    "Predictor",
    "SegmentationMode",
    "check_files",
    "output_paths",
    "read_image",
    "training_resize",
]

_DATASET = "findlit.predict"
"""Dataset name of the batches built here; the on-the-fly vocabulary is registered under it."""


class PredictError(ConfigError):
    """A prediction request that cannot run: no prompts, a missing image, colliding outputs...

    A config error: the request (the command's arguments or a ``Predictor`` call) is what to fix.
    """


def read_image(path: str | Path) -> Tensor:
    """uint8[3,H,W] RGB of an image file, turned upright by its EXIF orientation."""
    try:
        return read_upright_image(path)
    except DataError as error:
        raise PredictError(f"cannot read image {path}: {error.message}") from None


Scribble = np.ndarray | Tensor | str | Path
"""A scribble: a mask bool[H,W] at the image's size, or an image file of one (non-zero on it)."""


def scribble_mask(scribble: Scribble, index: int, field: str = "scribbles") -> np.ndarray:
    """Scribble ``index`` as a mask (files read by :func:`~findlit.data.predict_config.read_scribble`).

    Raises:
        PredictError: a file that cannot be read, in one line naming ``field`` (``--scribbles`` on
            the command line), the index and the file.

    """
    if isinstance(scribble, np.ndarray):
        return scribble.astype(bool, copy=False)
    if isinstance(scribble, Tensor):
        return scribble.detach().cpu().numpy().astype(bool, copy=False)
    if not isinstance(scribble, str | Path):
        return np.asarray(scribble)  # e.g. nested lists; request_problem checks the shape
    try:
        return read_scribble(scribble)
    except DataError as error:
        raise PredictError(f"{field}: cannot read scribble {index} ({scribble}): {error.message}") from None


def training_resize(checkpoint: Mapping[str, Any], path: Path) -> tuple[int | None, int | None]:
    """(image_size, eval_shortest_edge) of the datasets the checkpoint was trained and evaluated on.

    Read from the checkpoint's ``datamodule_hyper_parameters`` if it has them, else from the
    ``config.yaml`` that LightningCLI saves in the run folder (``<run>/checkpoints/x.ckpt`` ->
    ``<run>/config.yaml``). The first dataset of ``test``, then ``val``, then ``train`` that sets
    ``transforms`` wins (:func:`~findlit.data.predict_config.evaluation_resize`). (None, None) when
    neither source says.
    """
    data = checkpoint.get("datamodule_hyper_parameters")
    if not data:
        config = path.resolve().parent.parent / "config.yaml"
        if config.is_file():
            try:
                loaded = yaml.safe_load(config.read_text())
            except yaml.YAMLError:
                loaded = None
            # LightningCLI saves its resolved config with the data section in the plain form (the
            # DataModule class is fixed), never as class_path/init_args
            data = loaded.get("data") if isinstance(loaded, dict) else None
    if not isinstance(data, Mapping):
        return None, None
    return evaluation_resize(data)


def check_files(images: Sequence[str | Path], out: str | Path, overwrite: bool = False) -> None:
    """Refuse no image, a missing image, two images of one stem and (unless ``overwrite``) outputs."""
    if isinstance(images, str | Path):
        raise PredictError("images must be a list of paths, not one path")
    if not images:
        raise PredictError("no image given")
    missing = [str(image) for image in images if not Path(image).is_file()]
    if missing:
        raise PredictError(f"image file(s) not found: {', '.join(missing)}")
    shared = sorted(shared_stems(images))
    if shared:
        raise PredictError(f"images share file stems {shared}: their outputs in {out} would collide")
    if Path(out).exists() and not Path(out).is_dir():
        raise PredictError(f"output folder {out} is a file")
    if not overwrite:
        refuse_existing([path for image in images for path in output_paths(image, out)])


class Predictor:
    """Masks for free-text prompts and class names on images, from a FINDModule.

    Args:
        module: the trained module (put in eval mode and moved to ``device``).
        image_size: longest side of the evaluation resize (cap when ``eval_shortest_edge`` is set).
        eval_shortest_edge: resize the shortest side to this instead (longest capped at image_size).
        device: where to run (default: CUDA if available, else CPU).
        mode: what class names give: ``panoptic`` (non-overlapping segments) or ``instance``
            (overlapping detections of the thing classes).
        min_score: instance mode: detections below this score are dropped.
        size_divisibility: images are padded to a multiple of this (the encoder's largest stride).
        pad_to_square: pad each image to ``image_size`` x ``image_size`` (as ``data.predict``
            entries do by default, so both routes give the same masks); false pads only to a
            multiple of ``size_divisibility``.

    """

    def __init__(
        self,
        module: FINDModule,
        image_size: int = DEFAULT_IMAGE_SIZE,
        eval_shortest_edge: int | None = None,
        device: str | torch.device | None = None,
        mode: SegmentationMode = "panoptic",
        min_score: float = 0.5,
        size_divisibility: int = 32,
        pad_to_square: bool = True,
    ):
        if mode not in ("panoptic", "instance"):
            raise PredictError(f"mode must be 'panoptic' or 'instance', got {mode!r}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.module = module.to(self.device).eval()
        self.resize = Resize(shortest_edge=eval_shortest_edge, longest_edge=image_size)
        self.mode: SegmentationMode = mode
        self.min_score = min_score
        self.size_divisibility = size_divisibility
        self.pad_to_square = pad_to_square

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        image_size: int | None = None,
        eval_shortest_edge: int | None = None,
        device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> Predictor:
        """Load a checkpoint; the resize defaults to its training config's (:func:`training_resize`).

        Raises:
            CheckpointNotFoundError: no checkpoint at ``path`` (a :class:`FileNotFoundError`).
            CheckpointError: the file is no usable checkpoint (not a torch file, truncated, holding
                code, no Lightning checkpoint), in one line naming it.
            EncoderMismatchError: the checkpoint was trained on other encoders than the ones its
                config builds here (the message names the checkpoint and every difference).

        """
        checkpoint = read_lightning_checkpoint(path, "checkpoint")  # tensors mapped, not read
        path = Path(path)
        try:
            overrides = checkpoint_overrides(checkpoint.get("hyper_parameters") or {})
            module = FINDModule.load_from_checkpoint(path, map_location="cpu", weights_only=True, **overrides)
        except EncoderMismatchError as error:
            raise EncoderMismatchError(f"checkpoint {path}: {error}") from None
        if image_size is None:
            trained_size, trained_shortest = training_resize(checkpoint, path)
            image_size = trained_size or DEFAULT_IMAGE_SIZE
            if eval_shortest_edge is None:
                eval_shortest_edge = trained_shortest
        return cls(module, image_size, eval_shortest_edge, device, **kwargs)

    # -- checks ------------------------------------------------------------------------------

    def request(
        self,
        prompts: Sequence[str],
        classes: Sequence[str] = (),
        stuff: Sequence[str] = (),
        points: Sequence[Sequence[float]] = (),
        boxes: Sequence[Sequence[float]] = (),
        scribbles: Sequence[Scribble] = (),
    ) -> PredictRequest:
        """The request of these prompts, names, clicks, boxes and scribbles in this predictor's mode.

        Raises:
            PredictError: a request this model cannot serve
                (:func:`~findlit.data.predict_config.request_problem`), a scribble file that cannot
                be read.

        """
        masks = [scribble_mask(scribble, index) for index, scribble in enumerate(scribbles)]
        problem = request_problem(prompts, classes, stuff, self.mode, points, boxes, masks)
        if problem is None:
            request = PredictRequest(
                list(prompts),
                list(classes),
                list(stuff),
                self.mode,
                self.min_score,
                [list(point) for point in points],
                [list(box) for box in boxes],
                masks,
            )
            problem = capability_problem(self.module, request)
        if problem is not None:
            raise PredictError(f"{problem[0]}: {problem[1]}")
        return request

    def check(
        self,
        prompts: Sequence[str],
        classes: Sequence[str] = (),
        stuff: Sequence[str] = (),
        points: Sequence[Sequence[float]] = (),
        boxes: Sequence[Sequence[float]] = (),
        scribbles: Sequence[Scribble] = (),
    ) -> None:
        """Refuse a request this model cannot serve (:meth:`request`, result unused)."""
        self.request(prompts, classes, stuff, points, boxes, scribbles)

    # -- inference ---------------------------------------------------------------------------

    @torch.inference_mode()
    def set_image(self, image: str | Path) -> None:
        """Read ``image`` and compute its frozen features once, as SAM's predictor does.

        Later :meth:`predict` calls without an image reuse them: a prompt then costs only the
        interface (the encoder, most of the time of a prediction, is not run again).
        """
        pixels = read_image(image)
        sample = prediction_sample(pixels, image, _DATASET, 0, self.resize, self.pad_to_square)
        batch = collate_samples([sample], self.size_divisibility)
        batch["images"] = batch["images"].to(self.device)
        batch["padding_mask"] = batch["padding_mask"].to(self.device)
        batch["features"] = self.module.features(batch)
        del batch["images"]
        self._image = batch

    @torch.inference_mode()
    def predict(
        self,
        image: str | Path | None = None,
        prompts: Sequence[str] = (),
        classes: Sequence[str] = (),
        stuff: Sequence[str] = (),
        points: Sequence[Sequence[float]] = (),
        boxes: Sequence[Sequence[float]] = (),
        scribbles: Sequence[Scribble] = (),
    ) -> Prediction:
        """Predict on one image file (:func:`~findlit.tasks.requests.predict_batch`, one image).

        Args:
            image: the image file; None = the image of the last :meth:`set_image`.
            prompts: free-text referring expressions, one mask each.
            classes: thing class names for panoptic or instance segmentation.
            stuff: stuff class names (panoptic mode), added to the vocabulary after ``classes``.
            points: clicks ``[x, y]`` or ``[x, y, label]`` (1 on, 0 off the object) in the image's
                pixels, together one object (interactive task).
            boxes: ``[x0, y0, x1, y1]`` in the image's pixels, one object each.
            scribbles: masks bool[H,W] at the image's size (or image files of them, non-zero on
                the scribble), one object each, as SAM's ``mask_input``.

        Returns:
            the :class:`Prediction` at the image's size.

        Raises:
            PredictError: a bad request, no image given or set, a click or box outside the image, a
                scribble of another size than the image.

        """
        request = self.request(prompts, classes, stuff, points, boxes, scribbles)
        if image is not None:
            self.set_image(image)
        batch = getattr(self, "_image", None)
        if batch is None:
            raise PredictError("no image: give one, or call set_image first")
        try:
            return predict_batch(self.module, batch, request)[0]
        except ConfigError as error:
            raise PredictError(str(error)) from None

    # -- files -------------------------------------------------------------------------------

    def write(
        self,
        images: Sequence[str | Path],
        out: str | Path,
        prompts: Sequence[str] = (),
        classes: Sequence[str] = (),
        stuff: Sequence[str] = (),
        overwrite: bool = False,
        points: Sequence[Sequence[float]] = (),
        boxes: Sequence[Sequence[float]] = (),
        scribbles: Sequence[Scribble] = (),
    ) -> list[tuple[Path, Path]]:
        """Predict on every image and save its overlay and JSON in ``out`` (see :meth:`Prediction.save`).

        Everything is checked before the first image runs: the request (:meth:`check`), that every
        image file exists, that no two images share a stem (their outputs would collide) and,
        unless ``overwrite``, that no output exists yet.

        Returns:
            per image, the (overlay, JSON) paths written.

        """
        request = self.request(prompts, classes, stuff, points, boxes, scribbles)
        check_files(images, out, overwrite)
        written = []
        for image in images:
            # the scribbles as read once by the request (not again per image)
            prediction = self.predict(image, prompts, classes, stuff, points, boxes, request.scribbles)
            written.append(prediction.save(out, overwrite=True))
        return written
