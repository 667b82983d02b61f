"""Inference on image files with free-text prompts and class names: :class:`Predictor`.

``Predictor.from_checkpoint(path)`` rebuilds a :class:`~findlit.module.FINDModule` (refusing a
checkpoint of other encoders) and predicts, for each image:

- one mask per free-text prompt (a referring expression), with the grounding task's score;
- optionally, segments of a vocabulary made on the fly from class names (thing classes, plus
  ``stuff`` names), with the segmentation task's panoptic or instance inference.

Images are resized as in evaluation (longest side ``image_size``, the training config's when the
checkpoint tells it); masks come back at the image's own size (after its EXIF orientation, i.e. as
the photo is shown). :meth:`Predictor.write` saves ``<out>/<stem>.png`` (overlay with labels and
scores) and ``<out>/<stem>.json`` (COCO compressed RLE masks, labels, scores, image size) per
image, after checking every input and output path, so a bad request fails before any work.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
import yaml
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from findlit.data.collate import collate_samples
from findlit.data.sample import Sample
from findlit.data.transforms import Resize
from findlit.encoders.checkpoint import EncoderMismatchError
from findlit.module import FINDModule
from findlit.outputs.coco_writers import write_json_atomic
from findlit.outputs.overlay import rle_json, save_overlay
from findlit.tasks.base import Task, TaskContext, Vocabulary

SegmentationMode = Literal["panoptic", "instance"]

DEFAULT_IMAGE_SIZE = 1024
"""Longest side of the evaluation resize when neither the caller nor the checkpoint gives one
(the default of :class:`~findlit.data.transforms.TransformConfig`)."""

_DATASET = "findlit.predict"
"""Dataset name of the batches built here; the on-the-fly vocabulary is registered under it."""


class PredictError(ValueError):
    """A prediction request that cannot run: no prompts, a missing image, an existing output..."""


@dataclass
class Prediction:
    """The masks predicted on one image, at the image's size H x W.

    Args:
        image: the image file.
        pixels: uint8[3,H,W], the decoded image.
        masks: bool[N,H,W]: first the class segments, then one mask per prompt.
        labels: N names (the class name, or the prompt text).
        scores: N confidences.
        sources: N of ``"class"`` or ``"prompt"``.

    """

    image: Path
    pixels: Tensor
    masks: Tensor
    labels: list[str]
    scores: list[float]
    sources: list[str]

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the image and of every mask."""
        return int(self.pixels.shape[-2]), int(self.pixels.shape[-1])

    def to_json(self) -> dict[str, Any]:
        """``{image, height, width, masks: [{label, score, source, segmentation, area, bbox}]}``."""
        entries = rle_json(self.masks, self.labels, self.scores)
        for entry, source in zip(entries, self.sources, strict=True):
            entry["source"] = source
        height, width = self.size
        return {"image": str(self.image), "height": height, "width": width, "masks": entries}

    def save(self, out: str | Path, overwrite: bool = False) -> tuple[Path, Path]:
        """Write ``<out>/<stem>.png`` and ``<out>/<stem>.json``; existing ones only if ``overwrite``."""
        overlay, document = output_paths(self.image, out)
        if not overwrite:
            _refuse_existing([overlay, document])
        save_overlay(overlay, self.pixels, self.masks, self.labels, self.scores)
        write_json_atomic(document, self.to_json())
        return overlay, document


def output_paths(image: str | Path, out: str | Path) -> tuple[Path, Path]:
    """(overlay PNG, RLE JSON) that ``image`` gets in folder ``out``."""
    stem = Path(image).stem
    return Path(out) / f"{stem}.png", Path(out) / f"{stem}.json"


def _refuse_existing(paths: Sequence[Path]) -> None:
    existing = [str(path) for path in paths if path.exists()]
    if existing:
        raise FileExistsError(f"output exists (pass overwrite to replace it): {', '.join(existing)}")


def read_image(path: str | Path) -> Tensor:
    """uint8[3,H,W] RGB of an image file, turned upright by its EXIF orientation."""
    try:
        with Image.open(path) as image:
            upright = ImageOps.exif_transpose(image)
            pixels = np.array(upright.convert("RGB"))
    except FileNotFoundError:
        raise PredictError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise PredictError(f"cannot read image {path}: {error}") from None
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


def resize_masks(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """bool[N,h,w] -> bool[N,H,W] by nearest neighbour (pixel centres matched, as the image resize)."""
    if tuple(masks.shape[-2:]) == size:
        return masks
    if masks.shape[0] == 0:
        return masks.new_zeros((0, *size))
    return F.interpolate(masks[None].float(), size=size, mode="nearest-exact")[0] > 0.5


def training_resize(checkpoint: Mapping[str, Any], path: Path) -> tuple[int | None, int | None]:
    """(image_size, eval_shortest_edge) of the datasets the checkpoint was trained and evaluated on.

    Read from the checkpoint's ``datamodule_hyper_parameters`` if it has them, else from the
    ``config.yaml`` that LightningCLI saves in the run folder (``<run>/checkpoints/x.ckpt`` ->
    ``<run>/config.yaml``). The first dataset of ``test``, then ``val``, then ``train`` that sets
    ``transforms`` wins. (None, None) when neither source says.
    """
    data = checkpoint.get("datamodule_hyper_parameters")
    if not data:
        config = path.resolve().parent.parent / "config.yaml"
        if config.is_file():
            try:
                loaded = yaml.safe_load(config.read_text())
            except yaml.YAMLError:
                loaded = None
            data = loaded.get("data") if isinstance(loaded, dict) else None
            if isinstance(data, dict) and "init_args" in data:
                data = data["init_args"]
    if not isinstance(data, Mapping):
        return None, None
    for stage in ("test", "val", "train"):
        for dataset in data.get(stage) or []:
            transforms = _field(dataset, "transforms")
            if transforms is None:
                continue
            size = _field(transforms, "image_size")
            shortest = _field(transforms, "eval_shortest_edge")
            if size is not None:
                return int(size), None if shortest is None else int(shortest)
    return None, None


def _field(value: Any, name: str) -> Any:
    """``value[name]`` of a mapping or ``value.name`` of a dataclass (hyperparameters keep either)."""
    return value.get(name) if isinstance(value, Mapping) else getattr(value, name, None)


def check_prompts(prompts: Sequence[str], classes: Sequence[str], stuff: Sequence[str] = ()) -> None:
    """Refuse an empty request, blank prompts or class names, and repeated class names."""
    if isinstance(prompts, str) or isinstance(classes, str) or isinstance(stuff, str):
        raise PredictError("prompts, classes and stuff must be lists of strings, not one string")
    if not prompts and not classes and not stuff:
        raise PredictError("nothing to predict: the prompt list is empty and no class names are given")
    for kind, texts in (("prompt", prompts), ("class name", classes), ("stuff class name", stuff)):
        for index, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise PredictError(f"{kind} {index} is empty: {text!r}")
    names = [*classes, *stuff]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise PredictError(f"class names given more than once: {repeated}")


def check_files(images: Sequence[str | Path], out: str | Path, overwrite: bool = False) -> None:
    """Refuse no image, a missing image, two images of one stem and (unless ``overwrite``) outputs."""
    if isinstance(images, str | Path):
        raise PredictError("images must be a list of paths, not one path")
    if not images:
        raise PredictError("no image given")
    missing = [str(image) for image in images if not Path(image).is_file()]
    if missing:
        raise PredictError(f"image file(s) not found: {', '.join(missing)}")
    stems = [Path(image).stem for image in images]
    shared = sorted({stem for stem in stems if stems.count(stem) > 1})
    if shared:
        raise PredictError(f"images share file stems {shared}: their outputs in {out} would collide")
    if not overwrite:
        _refuse_existing([path for image in images for path in output_paths(image, out)])


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
    ):
        if mode not in ("panoptic", "instance"):
            raise PredictError(f"mode must be 'panoptic' or 'instance', got {mode!r}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.module = module.to(self.device).eval()
        self.resize = Resize(shortest_edge=eval_shortest_edge, longest_edge=image_size)
        self.mode: SegmentationMode = mode
        self.min_score = min_score
        self.size_divisibility = size_divisibility

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
            FileNotFoundError: no checkpoint at ``path``.
            EncoderMismatchError: the checkpoint was trained on other encoders than the ones its
                config builds here (the message names the checkpoint and every difference).

        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        try:
            module = FINDModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)
        except EncoderMismatchError as error:
            raise EncoderMismatchError(f"checkpoint {path}: {error}") from None
        if image_size is None:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            trained_size, trained_shortest = training_resize(checkpoint, path)
            image_size = trained_size or DEFAULT_IMAGE_SIZE
            if eval_shortest_edge is None:
                eval_shortest_edge = trained_shortest
        return cls(module, image_size, eval_shortest_edge, device, **kwargs)

    # -- checks ------------------------------------------------------------------------------

    def check(self, prompts: Sequence[str], classes: Sequence[str] = (), stuff: Sequence[str] = ()) -> None:
        """Refuse a request this model cannot serve (see also :func:`check_prompts`)."""
        check_prompts(prompts, classes, stuff)
        if prompts and "grounding" not in self.module.tasks:
            raise PredictError(
                f"free-text prompts need the grounding task; this checkpoint has {list(self.module.tasks)}"
            )
        if classes or stuff:
            if "segmentation" not in self.module.tasks:
                raise PredictError(
                    f"class names need the segmentation task; this checkpoint has {list(self.module.tasks)}"
                )
            outputs = cast(Any, self.module.tasks["segmentation"]).outputs
            if self.mode not in outputs:
                raise PredictError(
                    f"the segmentation task of this checkpoint gives {list(outputs)}, not {self.mode}"
                )
            if self.mode == "instance" and not classes:
                raise PredictError("instance mode needs thing class names: only stuff names are given")

    # -- inference ---------------------------------------------------------------------------

    @torch.inference_mode()
    def predict(
        self,
        image: str | Path,
        prompts: Sequence[str] = (),
        classes: Sequence[str] = (),
        stuff: Sequence[str] = (),
    ) -> Prediction:
        """Predict on one image file.

        Args:
            image: the image file.
            prompts: free-text referring expressions, one mask each.
            classes: thing class names for panoptic or instance segmentation.
            stuff: stuff class names (panoptic mode), added to the vocabulary after ``classes``.

        Returns:
            the :class:`Prediction` at the image's size.

        """
        self.check(prompts, classes, stuff)
        pixels = read_image(image)
        size = (int(pixels.shape[-2]), int(pixels.shape[-1]))
        masks: list[Tensor] = []
        labels: list[str] = []
        scores: list[float] = []
        sources: list[str] = []
        if classes or stuff:
            names = [*classes, *stuff]
            vocabulary = Vocabulary(names, [True] * len(classes) + [False] * len(stuff))
            found_masks, found_labels, found_scores = self._segment(pixels, vocabulary)
            masks.append(resize_masks(found_masks, size))
            labels += [names[label] for label in found_labels]
            scores += found_scores
            sources += ["class"] * len(found_labels)
        if prompts:
            grounded = self._run(pixels, "grounding", {"sentences": list(prompts)}, {})
            masks.append(resize_masks(grounded["masks"], size))
            labels += list(prompts)
            scores += [float(s) for s in grounded["scores"].tolist()]
            sources += ["prompt"] * len(prompts)
        return Prediction(Path(image), pixels, torch.cat(masks).cpu(), labels, scores, sources)

    def _segment(self, pixels: Tensor, vocabulary: Vocabulary) -> tuple[Tensor, list[int], list[float]]:
        """bool[N,h,w] masks (at the resized size), class indices and scores of the segmentation task."""
        result = self._run(pixels, "segmentation", {}, {_DATASET: vocabulary})
        if self.mode == "panoptic":
            segment_ids, segments = result["panoptic"]
            masks = torch.stack([segment_ids == s["id"] for s in segments]) if segments else None
            if masks is None:
                masks = torch.zeros(0, *segment_ids.shape, dtype=torch.bool, device=segment_ids.device)
            return masks, [int(s["category"]) for s in segments], [float(s["score"]) for s in segments]
        instance = result["instance"]
        keep = instance["scores"] >= self.min_score
        return (
            instance["masks"][keep],
            [int(label) for label in instance["labels"][keep].tolist()],
            [float(score) for score in instance["scores"][keep].tolist()],
        )

    def _run(
        self, pixels: Tensor, task_name: str, fields: dict[str, Any], vocabularies: dict[str, Vocabulary]
    ) -> dict[str, Any]:
        """One image through a task: its prediction dict at the resized image size."""
        sample: Sample = {
            "task": task_name,
            "dataset": _DATASET,
            "image_id": 0,
            "image": pixels,
            "orig_size": (int(pixels.shape[-2]), int(pixels.shape[-1])),
            **fields,  # type: ignore[typeddict-item]
        }
        sample = self.resize(sample, torch.Generator())
        batch = collate_samples([sample], self.size_divisibility)
        batch["images"] = batch["images"].to(self.device)
        batch["padding_mask"] = batch["padding_mask"].to(self.device)
        module = self.module
        task = cast(Task, module.tasks[task_name])
        # a context of its own: the on-the-fly vocabulary must not leak into the module's
        context = TaskContext(
            module.interface, module.prompt_cache, vocabularies, module.prompt_cache.sentences
        )
        output = module.interface(module.features(batch), task.prompts(batch, context))
        return task.predict(output, batch, context)[0]

    # -- files -------------------------------------------------------------------------------

    def write(
        self,
        images: Sequence[str | Path],
        out: str | Path,
        prompts: Sequence[str] = (),
        classes: Sequence[str] = (),
        stuff: Sequence[str] = (),
        overwrite: bool = False,
    ) -> list[tuple[Path, Path]]:
        """Predict on every image and save its overlay and JSON in ``out`` (see :meth:`Prediction.save`).

        Everything is checked before the first image runs: the request (:meth:`check`), that every
        image file exists, that no two images share a stem (their outputs would collide) and,
        unless ``overwrite``, that no output exists yet.

        Returns:
            per image, the (overlay, JSON) paths written.

        """
        self.check(prompts, classes, stuff)
        check_files(images, out, overwrite)
        written = []
        for image in images:
            prediction = self.predict(image, prompts, classes, stuff)
            written.append(prediction.save(out, overwrite=True))
        return written
