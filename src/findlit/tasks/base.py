"""What a task is: everything specific to one task, in one class.

A :class:`Task` turns a batch into interface prompts, and the interface's output into losses and
predictions; it also says which dataset formats feed it, builds and updates its evaluation metrics,
chooses the standard-format writer of its test predictions and the masks its overlays draw, and
answers the parts of a ``predict`` request it serves. Tasks register by name
(:mod:`findlit.tasks.registry`); nothing outside ``tasks/`` names one.

Tasks know no Lightning; the FINDModule routes each batch to its task by ``batch["task"]``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, TypeAlias

from torch import Tensor, nn
from torchmetrics import MetricCollection

from findlit.data.collate import Batch
from findlit.data.predict_config import PredictRequest
from findlit.encoders.base import TextEmbeddings
from findlit.interface.find import FINDInterface, InterfaceOutput, InterfacePrompts
from findlit.metrics import SegmentationMetrics
from findlit.outputs.overlay import OverlayLayers
from findlit.outputs.result_sinks import ResultsOptions, ResultsSink


@dataclass
class Vocabulary:
    """The open vocabulary of one dataset: ``labels`` in its targets index ``class_names``."""

    class_names: list[str]
    thing_classes: list[bool]
    category_ids: list[int] = field(default_factory=list)


@dataclass
class TaskContext:
    """What a task needs besides the batch.

    Args:
        interface: the FIND interface (tasks read its heads, e.g. ``no_object``).
        encode_text: strings -> frozen text embeddings, usually a :class:`~findlit.encoders.PromptCache`.
        vocabularies: dataset name -> :class:`Vocabulary`.
        encode_sentences: strings -> their sentence vectors float[T,D] only (e.g.
            :meth:`~findlit.encoders.PromptCache.sentences`, which skips padding the tokens); None
            takes ``encode_text(texts).sentence``.
        features: a batch of images (``images``, ``padding_mask``) -> its frozen pyramid, as the
            module computes a batch's (e.g. :meth:`FINDModule.features
            <findlit.training.module.FINDModule.features>`), for a task that reads other images than
            its batch's (the interleave task's references); None = no such reading.

    """

    interface: FINDInterface
    encode_text: Callable[[Sequence[str]], TextEmbeddings]
    vocabularies: Mapping[str, Vocabulary] = field(default_factory=dict)
    encode_sentences: Callable[[Sequence[str]], Tensor] | None = None
    features: Callable[[Batch], dict[str, Tensor]] | None = None

    def sentences(self, texts: Sequence[str]) -> Tensor:
        """float[T,D] sentence vectors of ``texts`` (the frozen text encoder's pooled embeddings)."""
        if self.encode_sentences is not None:
            return self.encode_sentences(texts)
        return self.encode_text(texts).sentence


@dataclass
class EvaluatedDataset:
    """What a task's metrics need to know of one evaluation dataset.

    Args:
        name: the dataset's name (metrics are logged as ``<stage>/<name>/<metric>``).
        vocabulary: the model's vocabulary of the dataset (empty for datasets without categories).
        panoptic: whether its targets partition the image (a COCO panoptic file); None when the
            dataset does not say.

    """

    name: str
    vocabulary: Vocabulary
    panoptic: bool | None = None


__all__ = [
    "EvaluatedDataset",
    "OverlayLayers",
    "RequestAnswer",
    "Task",
    "TaskContext",
    "TaskMetrics",
    "TaskRun",
    "Vocabulary",
]

TaskMetrics: TypeAlias = MetricCollection | SegmentationMetrics
"""What :meth:`Task.build_metrics` returns: ``update``/``compute``/``reset`` and ``clone(prefix=...)``."""


class RequestAnswer(NamedTuple):
    """A task's answer to a ``predict`` request on one image.

    ``masks`` bool[N,h,w] at the image's transformed size (``image_sizes``); ``labels`` the N names
    shown with them (a class name, a prompt's text); ``scores`` N confidences; ``source`` what asked
    for them (a :class:`~findlit.data.predict_config.PredictRequest` field kind, e.g. ``"class"``).
    """

    masks: Tensor
    labels: list[str]
    scores: list[float]
    source: str


TaskRun: TypeAlias = Callable[[Batch, Mapping[str, Vocabulary]], list[dict[str, Any]]]
"""Runs the answering task on a batch with the given vocabularies, on the features computed once for
the request: per image the task's :meth:`Task.predict` dict at ``image_sizes``."""


class Task(nn.Module):
    """Base of the tasks.

    Subclasses set ``name`` (the key of :mod:`~findlit.tasks.registry`, of ``model.tasks`` and of a
    dataset's ``task``) and ``formats`` (the ``data.*[i].format`` values that may feed them), and
    implement ``prompts``, ``losses`` and ``predict``. The other hooks have "nothing" defaults: no
    metrics, no standard-format results, no overlays, no ``predict`` requests served.

    Subclasses may own trainable parameters (e.g. a visual prompt encoder); they are trained with
    the interface.
    """

    name: ClassVar[str] = ""
    formats: ClassVar[tuple[str, ...]] = ()
    """Dataset formats (``data.*[i].format``) whose datasets this task trains and evaluates on."""
    serves: ClassVar[tuple[str, ...]] = ()
    """:class:`~findlit.data.predict_config.PredictRequest` fields (lists) this task answers."""
    needs_visual_prompts: ClassVar[bool] = False
    """Whether the task's prompts are visual whatever its options (the default task list leaves it
    out of a model whose interface is built without ``visual_prompts``)."""

    @property
    def uses_visual_prompts(self) -> bool:
        """Whether this task, as configured, gives visual prompts (the interface then needs them)."""
        return self.needs_visual_prompts

    # -- training ----------------------------------------------------------------------------------

    def prompts(self, batch: Batch, context: TaskContext) -> InterfacePrompts:
        """The embedding types and prompt tokens this batch instantiates."""
        raise NotImplementedError

    def run(self, batch: Batch, features: dict[str, Tensor], context: TaskContext) -> InterfaceOutput:
        """Run the interface on ``batch``'s frozen ``features``: by default once, on :meth:`prompts`.

        A task that needs several forwards of one batch (the interactive task's click rounds) overrides
        it; the features are computed once by the caller. What the rounds find out beside the last
        forward's predictions goes to the returned output's ``extras``.
        """
        return context.interface(features, self.prompts(batch, context), batch["padding_mask"])

    def losses(
        self, output: InterfaceOutput, batch: Batch, context: TaskContext
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """(total weighted loss, named unweighted terms for logging) over every layer."""
        raise NotImplementedError

    def predict(self, output: InterfaceOutput, batch: Batch, context: TaskContext) -> list[dict[str, Any]]:
        """Per-image predictions at each image's ``image_sizes`` (before padding)."""
        raise NotImplementedError

    # -- evaluation (detectron2's DatasetEvaluator shape: build once, update per batch) -------------

    def build_metrics(self, dataset: EvaluatedDataset) -> TaskMetrics | None:
        """The metrics of one evaluation dataset, without prefix (the module clones them per stage).

        None: the dataset is evaluated by its loss only.
        """
        return None

    def update_metrics(
        self,
        metrics: TaskMetrics,
        batch: Batch,
        predictions: list[dict[str, Any]],
        context: TaskContext,
    ) -> None:
        """Feed one batch's ``predictions`` (this task's ``predict``) and targets to ``metrics``."""

    # -- outputs ------------------------------------------------------------------------------------

    def results_sink(
        self, folder: Path, dataset: Any, vocabulary: Any, options: ResultsOptions
    ) -> ResultsSink | None:
        """The writer of this task's test predictions in a standard format, or None (nothing written).

        Args:
            folder: the dataset's prediction folder (``predictions/<dataset>``).
            dataset: the test dataset (its ``records`` and ``categories``).
            vocabulary: the model's :class:`Vocabulary` of the dataset, else the dataset itself
                (both have ``class_names`` and ``category_ids``).
            options: the writer's options (gallery length, overwrite under DDP).

        """
        return None

    def overlay_layers(
        self, prediction: Mapping[str, Any], class_names: Sequence[str]
    ) -> OverlayLayers | None:
        """What to draw of one image's prediction (at the transformed size), or None (no overlay)."""
        return None

    # -- prediction requests ------------------------------------------------------------------------

    def asked(self, request: PredictRequest) -> bool:
        """Whether ``request`` asks anything of this task (one of its ``serves`` fields is non-empty)."""
        return any(getattr(request, name) for name in self.serves)

    def request_problem(self, request: PredictRequest) -> tuple[str, str] | None:
        """Why this task cannot answer ``request`` as configured, as (request field, message), or None."""
        return None

    def answer(self, request: PredictRequest, batch: Batch, run: TaskRun) -> list[RequestAnswer]:
        """Per image of ``batch``, this task's answer to ``request``.

        Args:
            request: the request (``asked`` is true).
            batch: a prediction batch (images or features, ``image_sizes``, per image ``targets``).
            run: runs this task on a batch (``task`` set to this task's name, ``targets`` and the
                vocabularies as this task needs them), on the request's precomputed features.

        """
        raise NotImplementedError(f"task {self.name!r} serves no predict request")
