"""A batch of images and a :class:`PredictRequest` -> one :class:`Prediction` per image.

:func:`predict_batch` is the one implementation behind :class:`~findlit.inference.predictor.Predictor`
(image files from Python, ``findlit predict --images``) and
:meth:`FINDModule.predict_step <findlit.training.module.FINDModule.predict_step>` (``findlit predict
--config``, batches of ``data.predict``). It encodes the images once and, on those features, runs
every task of the model that the request asks something of (a task's ``serves`` fields; findlit's:
class names -> segmentation, free-text prompts -> grounding), each answering with masks
(:meth:`Task.answer <findlit.tasks.base.Task.answer>`). The answers come in the order of the request's
fields (class segments first, then one mask per prompt).

Masks come back at each image's own size (``orig_size``, nearest neighbour from the resized image).

The model is anything with the frozen features, the interface, the prompt cache and the tasks
(:class:`PredictionModel`; a :class:`~findlit.training.module.FINDModule` is one), so this module
needs nothing of training.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import torch
from torch import Tensor, nn

from findlit.data.collate import Batch
from findlit.data.predict_config import PredictRequest
from findlit.encoders.prompt_cache import PromptCache
from findlit.interface.find import FINDInterface
from findlit.nearest_resize import resize_nearest
from findlit.outputs.coco_writers import write_json_atomic
from findlit.outputs.overlay import output_paths, refuse_existing, rle_json, save_overlay
from findlit.tasks.base import RequestAnswer, Task, TaskContext, Vocabulary
from findlit.tasks.registry import task_class, task_names

REQUEST_FIELDS: dict[str, str] = {
    "classes": "class names",
    "stuff": "class names",
    "prompts": "free-text prompts",
    "points": "clicks",
    "boxes": "boxes",
    "scribbles": "scribbles",
}
"""The :class:`PredictRequest` fields that ask for masks, in the order answers come, and what they hold."""


class PredictionModel(Protocol):
    """What :func:`predict_batch` needs of a model (a FINDModule has it).

    ``tasks``: task name -> :class:`~findlit.tasks.base.Task` (an ``nn.ModuleDict``).
    """

    interface: FINDInterface
    prompt_cache: PromptCache
    tasks: nn.ModuleDict

    def features(self, batch: Batch) -> dict[str, Tensor]:
        """The frozen pyramid of a batch (its cached ``features``, else the vision encoder's)."""


@dataclass
class Prediction:
    """The masks predicted on one image, at the image's size H x W.

    Args:
        image: the image file.
        pixels: uint8[3,H,W], the decoded image.
        masks: bool[N,H,W]: first the class segments, then one mask per prompt.
        labels: N names (the class name, or the prompt text).
        scores: N confidences.
        sources: N of ``"class"``, ``"prompt"`` or ``"visual"`` (clicks, a box).
        points: the request's clicks ``[x, y(, label)]`` in image pixels, drawn on the overlay.
        boxes: the request's boxes ``[x0, y0, x1, y1]``, drawn on the overlay.

    """

    image: Path
    pixels: Tensor
    masks: Tensor
    labels: list[str]
    scores: list[float]
    sources: list[str]
    points: list[list[float]] = dataclasses.field(default_factory=list)
    boxes: list[list[float]] = dataclasses.field(default_factory=list)

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
        save_overlay(
            overlay, self.pixels, self.masks, self.labels, self.scores, points=self.points, boxes=self.boxes
        )
        write_json_atomic(document, self.to_json())
        return overlay, document


def _model_tasks(model: PredictionModel) -> dict[str, Task]:
    return {name: cast(Task, task) for name, task in model.tasks.items()}


def _asked_tasks(model: PredictionModel, request: PredictRequest) -> Iterator[Task]:
    """The model's tasks that ``request`` asks something of, in the order of :data:`REQUEST_FIELDS`."""
    order = list(REQUEST_FIELDS)
    asked = [task for task in _model_tasks(model).values() if task.asked(request)]
    yield from sorted(
        asked, key=lambda task: min((order.index(f) for f in task.serves if f in order), default=len(order))
    )


def capability_problem(model: PredictionModel, request: PredictRequest) -> tuple[str, str] | None:
    """Why ``model`` cannot serve ``request``, as (request field, message), or None.

    Each non-empty field of :data:`REQUEST_FIELDS` needs a task of the model that serves it (a
    ``stuff`` list alone is reported under ``classes``, which usually comes with it); each such task
    may refuse the request as it is configured (e.g. segmentation without the request's ``mode``).
    """
    tasks = _model_tasks(model)
    # prompts first: the field a request without class names always has
    for field in sorted(REQUEST_FIELDS, key=lambda name: name != "prompts"):
        what = REQUEST_FIELDS[field]
        if not getattr(request, field) or any(field in task.serves for task in tasks.values()):
            continue
        needed = [name for name in task_names() if field in task_class(name).serves]
        reported = "classes" if field == "stuff" else field
        need = " or ".join(needed) if needed else "a"
        return reported, f"{what} need the {need} task; this model has {list(tasks)}"
    for task in _asked_tasks(model, request):
        problem = task.request_problem(request)
        if problem is not None:
            return problem
    return None


@torch.inference_mode()
def predict_batch(model: PredictionModel, batch: Batch, request: PredictRequest) -> list[Prediction]:
    """Masks for ``request`` on every image of a prediction batch.

    Args:
        model: the model (its device is the batch's; its vocabularies are left untouched).
        batch: images uint8[B,3,H,W] padded (or cached ``features``), ``image_sizes``, ``orig_sizes``,
            and per image ``targets[b]["file"]`` and ``targets[b]["pixels"]`` (uint8[3,H0,W0], a
            NumPy array or a tensor), as :func:`~findlit.data.predict_dataset.collate_predict` makes.
        request: what to predict on every image.

    Returns:
        B :class:`Prediction` on the CPU, masks bool[N,H0,W0] at each image's ``orig_size``: the
        class segments first (panoptic segments, or instance detections of at least
        ``request.min_score``), then one mask per prompt.

    """
    # once for every task: the frozen pyramid does not depend on the prompts
    features = model.features(batch)
    found: list[list[RequestAnswer]] = [[] for _ in batch["image_ids"]]
    for task in _asked_tasks(model, request):
        run = partial(_run, model, task, features)
        for b, answer in enumerate(task.answer(request, batch, run)):
            found[b].append(answer)
    predictions = []
    for b, parts in enumerate(found):
        target = batch["targets"][b]
        size = (int(batch["orig_sizes"][b][0]), int(batch["orig_sizes"][b][1]))
        pixels = target["pixels"]
        pixels = torch.from_numpy(pixels) if isinstance(pixels, np.ndarray) else pixels.cpu()
        # the empty block keeps the size when nothing was found
        image_masks = [torch.zeros(0, *size, dtype=torch.bool)]
        image_masks += [resize_nearest(part.masks, size).cpu() for part in parts]
        predictions.append(
            Prediction(
                Path(target["file"]),
                pixels,
                torch.cat(image_masks),
                [label for part in parts for label in part.labels],
                [score for part in parts for score in part.scores],
                [part.source for part in parts for _ in part.labels],
                [list(point) for point in request.points],
                [list(box) for box in request.boxes],
            )
        )
    return predictions


def _run(
    model: PredictionModel,
    task: Task,
    features: dict[str, Tensor],
    batch: Batch,
    vocabularies: Mapping[str, Vocabulary],
) -> list[dict[str, Any]]:
    """``task`` on precomputed features: per image its prediction dict at ``image_sizes``."""
    # a context of its own: an on-the-fly vocabulary must not leak into the model's
    context = TaskContext(
        model.interface, model.prompt_cache, vocabularies, model.prompt_cache.sentences, model.features
    )
    output = task.run(batch, features, context)
    return task.predict(output, batch, context)
