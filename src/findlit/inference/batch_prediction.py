"""A batch of images and a :class:`PredictRequest` -> one :class:`Prediction` per image.

:func:`predict_batch` is the one implementation behind :class:`~findlit.inference.predictor.Predictor`
(image files from Python, ``findlit predict --images``) and
:meth:`FINDModule.predict_step <findlit.training.module.FINDModule.predict_step>` (``findlit predict
--config``, batches of ``data.predict``). It encodes the images once and runs on those features:

- the segmentation task, with a vocabulary made on the fly from the class names (``classes`` are
  things, ``stuff`` are not), for panoptic segments or instance detections;
- the grounding task, with the free-text prompts as every image's sentences: one mask each.

Masks come back at each image's own size (``orig_size``, nearest neighbour from the resized image).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from findlit.data.collate import Batch
from findlit.data.predict_config import PredictRequest
from findlit.outputs.coco_writers import write_json_atomic
from findlit.outputs.overlay import rle_json, save_overlay
from findlit.outputs.test_results import OutputExistsError
from findlit.tasks.base import Task, TaskContext, Vocabulary

if TYPE_CHECKING:
    from findlit.training.module import FINDModule


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
            refuse_existing([overlay, document])
        save_overlay(overlay, self.pixels, self.masks, self.labels, self.scores)
        write_json_atomic(document, self.to_json())
        return overlay, document


def output_paths(image: str | Path, out: str | Path) -> tuple[Path, Path]:
    """(overlay PNG, RLE JSON) that ``image`` gets in folder ``out``."""
    stem = Path(image).stem
    return Path(out) / f"{stem}.png", Path(out) / f"{stem}.json"


def refuse_existing(paths: Sequence[Path]) -> None:
    """Raise :class:`~findlit.outputs.test_results.OutputExistsError` naming those of ``paths`` that exist."""
    existing = [str(path) for path in paths if path.exists()]
    if existing:
        raise OutputExistsError(f"output exists (pass overwrite to replace it): {', '.join(existing)}")


def resize_masks(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """bool[N,h,w] -> bool[N,H,W] by nearest neighbour (pixel centres matched, as the image resize)."""
    if tuple(masks.shape[-2:]) == size:
        return masks
    if masks.shape[0] == 0:
        return masks.new_zeros((0, *size))
    return F.interpolate(masks[None].float(), size=size, mode="nearest-exact")[0] > 0.5


def capability_problem(module: FINDModule, request: PredictRequest) -> tuple[str, str] | None:
    """Why ``module`` cannot serve ``request``, as (request field, message), or None.

    Prompts need the grounding task; class names need the segmentation task with the request's
    mode (``panoptic`` or ``instance``) among its outputs.
    """
    if request.prompts and "grounding" not in module.tasks:
        return "prompts", f"free-text prompts need the grounding task; this model has {list(module.tasks)}"
    if request.classes or request.stuff:
        if "segmentation" not in module.tasks:
            return (
                "classes",
                f"class names need the segmentation task; this model has {list(module.tasks)}",
            )
        outputs = cast(Any, module.tasks["segmentation"]).outputs
        if request.mode not in outputs:
            return "mode", f"the segmentation task of this model gives {list(outputs)}, not {request.mode}"
    return None


@torch.inference_mode()
def predict_batch(module: FINDModule, batch: Batch, request: PredictRequest) -> list[Prediction]:
    """Masks for ``request`` on every image of a prediction batch.

    Args:
        module: the model (its device is the batch's; its vocabularies are left untouched).
        batch: images uint8[B,3,H,W] padded (or cached ``features``), ``image_sizes``, ``orig_sizes``,
            and per image ``targets[b]["file"]`` and ``targets[b]["pixels"]`` (uint8[3,H0,W0], a
            NumPy array or a tensor), as :func:`~findlit.data.predict_dataset.collate_predict` makes.
        request: what to predict on every image.

    Returns:
        B :class:`Prediction` on the CPU, masks bool[N,H0,W0] at each image's ``orig_size``: the
        class segments first (panoptic segments, or instance detections of at least
        ``request.min_score``), then one mask per prompt.

    """
    # once for both tasks: the frozen pyramid does not depend on the prompts
    features = module.features(batch)
    found: list[list[tuple[Tensor, list[str], list[float], str]]] = [[] for _ in batch["image_ids"]]
    if request.classes or request.stuff:
        names = [*request.classes, *request.stuff]
        vocabulary = Vocabulary(names, [True] * len(request.classes) + [False] * len(request.stuff))
        task_batch = cast(Batch, {**batch, "task": "segmentation"})
        results = _run(module, features, task_batch, {batch["dataset"]: vocabulary})
        for b, result in enumerate(results):
            masks, indices, scores = _segments(result, request)
            found[b].append((masks, [names[index] for index in indices], scores, "class"))
    if request.prompts:
        sentences = [{"sentences": list(request.prompts)} for _ in batch["image_ids"]]
        task_batch = cast(Batch, {**batch, "task": "grounding", "targets": sentences})
        for b, result in enumerate(_run(module, features, task_batch, {})):
            scores = [float(s) for s in result["scores"].tolist()]
            found[b].append((result["masks"], list(request.prompts), scores, "prompt"))
    predictions = []
    for b, parts in enumerate(found):
        target = batch["targets"][b]
        size = (int(batch["orig_sizes"][b][0]), int(batch["orig_sizes"][b][1]))
        pixels = target["pixels"]
        pixels = torch.from_numpy(pixels) if isinstance(pixels, np.ndarray) else pixels.cpu()
        # the empty block keeps the size when nothing was found
        image_masks = [torch.zeros(0, *size, dtype=torch.bool)]
        image_masks += [resize_masks(masks, size).cpu() for masks, _, _, _ in parts]
        predictions.append(
            Prediction(
                Path(target["file"]),
                pixels,
                torch.cat(image_masks),
                [label for _, labels, _, _ in parts for label in labels],
                [score for _, _, scores, _ in parts for score in scores],
                [source for _, labels, _, source in parts for _ in labels],
            )
        )
    return predictions


def _run(
    module: FINDModule, features: dict[str, Tensor], batch: Batch, vocabularies: dict[str, Vocabulary]
) -> list[dict[str, Any]]:
    """The batch's task on precomputed features: per image its prediction dict at ``image_sizes``."""
    task = cast(Task, module.tasks[batch["task"]])
    # a context of its own: the on-the-fly vocabulary must not leak into the module's
    context = TaskContext(module.interface, module.prompt_cache, vocabularies, module.prompt_cache.sentences)
    output = module.interface(features, task.prompts(batch, context), batch["padding_mask"])
    return task.predict(output, batch, context)


def _segments(result: dict[str, Any], request: PredictRequest) -> tuple[Tensor, list[int], list[float]]:
    """bool[N,h,w] masks (at the resized size), class indices and scores of one image's segmentation."""
    if request.mode == "panoptic":
        segment_ids, segments = result["panoptic"]
        if segments:
            masks = torch.stack([segment_ids == segment["id"] for segment in segments])
        else:
            masks = torch.zeros(0, *segment_ids.shape, dtype=torch.bool, device=segment_ids.device)
        return masks, [int(s["category"]) for s in segments], [float(s["score"]) for s in segments]
    instance = result["instance"]
    keep = instance["scores"] >= request.min_score
    return (
        instance["masks"][keep],
        [int(label) for label in instance["labels"][keep].tolist()],
        [float(score) for score in instance["scores"][keep].tolist()],
    )
