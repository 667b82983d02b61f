"""Generic segmentation (panoptic, instance, semantic) as a FIND task.

Prompts: the class names of the batch's dataset are shared ``tokens.language.class`` prompts with
one ``queries.language.class`` each; ``proposals.vision.object`` proposals and one
``queries.vision.image`` query are learned. A proposal's class logits are its scaled cosines with
the same layer's class-query embeddings plus the interface's no-object class (index K).

Losses: Mask2Former's CE + BCE + Dice on every layer (:func:`~findlit.losses.segmentation_losses`).
Targets are in the padded frame and the mask logits at stride 4 of it; the matcher and the losses
sample points in normalised coordinates of that frame, so the two align.

Predictions: Mask2Former's inference on the last layer. The stride-4 logits are upsampled
bilinearly to the padded frame, then cropped to each image's ``image_sizes`` (where the padding
mask says the image is). The post-processing of one image is in the module-level functions
:func:`semantic_inference`, :func:`panoptic_inference` and :func:`instance_inference`.

Datasets: ``coco_panoptic`` and ``coco_instances``. Metrics: PQ, mask AP and semantic mIoU
(:mod:`findlit.tasks.segmentation_metrics`). Test results: COCO panoptic PNGs + JSON and COCO
instance results (:class:`~findlit.outputs.result_sinks.SegmentationSink`). Overlays: the panoptic
segments, else the instances. ``predict`` requests: class names (``classes`` things, ``stuff`` not)
become a vocabulary made on the fly, for panoptic segments or instance detections (the request's
``mode``, which must be among ``outputs``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, cast

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from findlit.data.collate import Batch, image_origin
from findlit.data.predict_config import PredictRequest
from findlit.interface.find import IMAGE_QUERY, InterfaceOutput, InterfacePrompts, PromptTokens
from findlit.losses import HungarianMatcher, LossWeights, PointSampling, segmentation_losses
from findlit.metrics import SegmentationMetrics
from findlit.outputs.result_sinks import ResultsOptions, ResultsSink, SegmentationSink, category_ids_of
from findlit.tasks.base import (
    EvaluatedDataset,
    OverlayLayers,
    RequestAnswer,
    Task,
    TaskContext,
    TaskMetrics,
    TaskRun,
    Vocabulary,
)
from findlit.tasks.mask_nms import mask_iou, per_class_nms
from findlit.tasks.registry import register_task
from findlit.tasks.segmentation_metrics import build_segmentation_metrics, update_segmentation_metrics

OBJECT = "proposals.vision.object"
CLASS_QUERY = "queries.language.class"
CLASS_TOKENS = "tokens.language.class"
OUTPUTS: tuple[str, ...] = ("panoptic", "instance", "semantic")
CLASS_EMBEDDINGS: tuple[str, ...] = ("queries", "sentences")


def semantic_inference(class_probs: Tensor, mask_logits: Tensor, chunk_elements: int = 1 << 24) -> Tensor:
    """Mask2Former's semantic inference of one image.

    The K x h x w class scores are never held at once: classes are scored in chunks of about
    ``chunk_elements`` scores and a running maximum is kept, so 10,000 class names on a large image
    take a bounded amount of memory (the cost stays K x h x w x Q by definition).

    Args:
        class_probs: float[Q,K+1] softmax class probabilities (last: no object).
        mask_logits: float[Q,h,w].
        chunk_elements: scores computed per chunk of classes.

    Returns:
        int64[h,w], per pixel the argmax over the K classes of ``sum_q p[q,k] * sigmoid(mask[q])``
        (the lowest class index among ties, as ``argmax``).

    """
    probs = class_probs[:, :-1].float()
    masks = mask_logits.float().sigmoid()
    num_classes = int(probs.shape[1])
    height, width = int(masks.shape[-2]), int(masks.shape[-1])
    step = max(1, chunk_elements // max(height * width, 1))
    best = torch.full((height, width), float("-inf"), device=masks.device)
    labels = torch.zeros(height, width, dtype=torch.int64, device=masks.device)
    for start in range(0, num_classes, step):
        scores = torch.einsum("qk,qhw->khw", probs[:, start : start + step], masks)
        top, index = scores.max(dim=0)
        better = top > best  # strict: an earlier chunk keeps a tie, as argmax would
        best = torch.where(better, top, best)
        labels = torch.where(better, index + start, labels)
    return labels


def panoptic_inference(
    class_probs: Tensor,
    mask_logits: Tensor,
    is_thing: Sequence[bool] | Tensor,
    object_mask_threshold: float = 0.8,
    overlap_threshold: float = 0.8,
) -> tuple[Tensor, list[dict[str, Any]]]:
    """Mask2Former's panoptic inference of one image.

    Queries whose top class is not no-object and whose top probability exceeds
    ``object_mask_threshold`` are kept; each pixel goes to the kept query of highest
    ``score * sigmoid(mask)`` if that query's mask probability there is >= 0.5 (else void). A query
    whose kept area is less than ``overlap_threshold`` of its own mask area (prob >= 0.5) is dropped;
    the stuff queries of one class are merged into one segment.

    Args:
        class_probs: float[Q,K+1] softmax class probabilities (last: no object).
        mask_logits: float[Q,h,w].
        is_thing: K flags, whether each class is a thing.
        object_mask_threshold: minimum top class probability of a kept query.
        overlap_threshold: minimum kept area / mask area of a segment.

    Returns:
        (segment ids int64[h,w] with 0 = void and segments numbered from 1, segments in id order as
        ``{"id", "category" (class index), "isthing", "score"}``; a merged stuff segment has the
        highest score of its queries).

    """
    num_classes = int(class_probs.shape[-1]) - 1
    height, width = int(mask_logits.shape[-2]), int(mask_logits.shape[-1])
    things = torch.as_tensor(is_thing, dtype=torch.bool).tolist()
    if len(things) != num_classes:
        raise ValueError(f"is_thing has {len(things)} flags for {num_classes} classes")
    scores, labels = class_probs.float().max(dim=-1)
    keep = labels.ne(num_classes) & (scores > object_mask_threshold)
    segment_ids = torch.zeros(height, width, dtype=torch.int64, device=mask_logits.device)
    if not bool(keep.any()):
        return segment_ids, []
    scores, labels = scores[keep], labels[keep]
    probs = mask_logits[keep].float().sigmoid()  # [n,h,w]
    owner = (scores[:, None, None] * probs).argmax(dim=0)  # [h,w], index into the kept queries
    count = int(scores.shape[0])
    foreground = probs.gather(0, owner[None])[0] >= 0.5
    # per kept query: pixels it wins, its own mask area, and what it keeps (wins and prob >= 0.5)
    won_area = torch.bincount(owner.flatten(), minlength=count).tolist()
    mask_area = (probs >= 0.5).flatten(1).sum(dim=1).tolist()
    kept_area = torch.bincount(owner[foreground], minlength=count).tolist()
    segment_of = [0] * count
    segments: list[dict[str, Any]] = []
    stuff: dict[int, dict[str, Any]] = {}
    for k, (label, score) in enumerate(zip(labels.tolist(), scores.tolist(), strict=True)):
        if won_area[k] == 0 or mask_area[k] == 0 or kept_area[k] == 0:
            continue
        if won_area[k] / mask_area[k] < overlap_threshold:
            continue
        if not things[label] and label in stuff:
            segment = stuff[label]
            segment["score"] = max(segment["score"], score)
        else:
            segment = {"id": len(segments) + 1, "category": label, "isthing": things[label], "score": score}
            segments.append(segment)
            if not things[label]:
                stuff[label] = segment
        segment_of[k] = segment["id"]
    lookup = torch.tensor(segment_of, dtype=torch.int64, device=mask_logits.device)
    segment_ids = torch.where(foreground, lookup[owner], segment_ids)
    return segment_ids, segments


def instance_inference(
    class_probs: Tensor,
    mask_logits: Tensor,
    is_thing: Sequence[bool] | Tensor,
    max_detections: int = 100,
    nms_threshold: float | None = None,
) -> dict[str, Tensor]:
    """Mask2Former's instance inference of one image, optionally followed by mask NMS.

    The ``max_detections`` (query, class) pairs of highest class probability over the thing classes
    are kept; each gets the query's binary mask (logit > 0) and the score class probability times
    the mask score (mean sigmoid inside the binary mask). With ``nms_threshold``, a detection whose
    mask overlaps a better-scored one of its class by more than that IoU is dropped
    (:func:`~findlit.tasks.mask_nms.per_class_nms`; not in Mask2Former).

    Args:
        class_probs: float[Q,K+1] softmax class probabilities (last: no object).
        mask_logits: float[Q,h,w].
        is_thing: K flags, whether each class is a thing.
        max_detections: at most this many detections.
        nms_threshold: mask IoU of per-class NMS, or None for none.

    Returns:
        ``{"masks": bool[n,h,w], "labels": int64[n], "scores": float[n]}``, by decreasing score.

    """
    num_classes = int(class_probs.shape[-1]) - 1
    things = torch.as_tensor(is_thing, dtype=torch.bool, device=class_probs.device)
    if int(things.numel()) != num_classes:
        raise ValueError(f"is_thing has {int(things.numel())} flags for {num_classes} classes")
    thing_classes = things.nonzero().flatten()
    num_things = int(thing_classes.numel())
    probs = class_probs[:, :-1].float()[:, thing_classes]  # [Q,T]
    top, index = probs.flatten().topk(min(max_detections, int(probs.numel())))
    queries = torch.div(index, max(num_things, 1), rounding_mode="floor")
    labels = thing_classes[index % max(num_things, 1)] if num_things else index
    logits = mask_logits[queries].float()
    masks = logits > 0
    mask_scores = (logits.sigmoid() * masks).flatten(1).sum(1) / (masks.flatten(1).sum(1) + 1e-6)
    scores = top * mask_scores
    if nms_threshold is None:
        order = scores.argsort(descending=True)
    else:
        # a query's detections (one per class) share its mask: IoU once per query, then per detection
        picked, detection_query = queries.unique(return_inverse=True)
        ious = mask_iou(mask_logits[picked].float() > 0)[detection_query][:, detection_query]
        order = per_class_nms(ious, labels, scores, nms_threshold)
    return {
        "masks": masks[order],
        "labels": labels[order].to(torch.int64),
        "scores": scores[order],
    }


@register_task
class SegmentationTask(Task):
    """Panoptic, instance and semantic segmentation over the dataset's class names.

    Args:
        num_proposals: object proposals per image (at most the interface's ``num_proposals``).
        weights: loss weights (``ce``, ``bce``, ``dice``, ``no_object``); ``ce``, ``bce`` and
            ``dice`` are also the matcher's costs, as in FIND.
        num_points: points per mask of the matcher and the mask losses.
        oversample_ratio: candidates drawn per point of the mask losses.
        importance_sample_ratio: fraction of the loss points taken from the most uncertain ones.
        overlap_threshold: panoptic: minimum kept area / mask area of a segment.
        object_mask_threshold: panoptic: minimum top class probability of a kept query.
        max_detections: instance: detections per image.
        instance_nms: instance: the mask IoU above which a detection repeating a better-scored one
            of its class is dropped (:func:`~findlit.tasks.mask_nms.per_class_nms`); None (FIND,
            Mask2Former): no NMS. After a short training several proposals still cover one object
            (measured on the demo: most high-scored false positives are such repeats).
        outputs: which predictions ``predict`` returns, among ``panoptic``, ``instance``,
            ``semantic``.
        class_embeddings: where the class embeddings come from. ``"queries"`` (FIND): one
            ``queries.language.class`` query per class name reads its tokens through the decoder, at
            every layer. ``"sentences"`` (APE's sentence-level prompts): each class name's pooled
            text embedding through the interface's language and semantic projections, outside the
            decoder, so the decoder's cost does not grow with the vocabulary and class embeddings
            cannot collapse through shared attention (measured on the demo: with ``"queries"`` the
            ten shape names converge to one embedding and things are never classified).

    """

    name: ClassVar[str] = "segmentation"
    formats: ClassVar[tuple[str, ...]] = ("coco_panoptic", "coco_instances")
    serves: ClassVar[tuple[str, ...]] = ("classes", "stuff")

    def __init__(
        self,
        num_proposals: int = 100,
        weights: LossWeights = LossWeights(),  # noqa: B008 (a frozen dataclass)
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        overlap_threshold: float = 0.8,
        object_mask_threshold: float = 0.8,
        max_detections: int = 100,
        outputs: tuple[str, ...] = OUTPUTS,
        class_embeddings: str = "queries",
        instance_nms: float | None = None,
    ):
        super().__init__()
        if class_embeddings not in CLASS_EMBEDDINGS:
            raise ValueError(f"class_embeddings {class_embeddings!r}; choose from {list(CLASS_EMBEDDINGS)}")
        self.class_embeddings = class_embeddings
        unknown = set(outputs) - set(OUTPUTS)
        if unknown:
            raise ValueError(f"unknown segmentation outputs {sorted(unknown)}; choose from {list(OUTPUTS)}")
        if num_proposals < 1 or max_detections < 1:
            raise ValueError("num_proposals and max_detections must be >= 1")
        if instance_nms is not None and not 0.0 <= instance_nms <= 1.0:
            raise ValueError(f"instance_nms must be an IoU in [0, 1] or None, got {instance_nms}")
        self.num_proposals = num_proposals
        self.weights = weights
        self.matcher = HungarianMatcher(
            cost_class=weights.ce, cost_mask=weights.bce, cost_dice=weights.dice, num_points=num_points
        )
        self.sampling = PointSampling(num_points, oversample_ratio, importance_sample_ratio)
        self.overlap_threshold = overlap_threshold
        self.object_mask_threshold = object_mask_threshold
        self.max_detections = max_detections
        self.instance_nms = instance_nms
        self.outputs = tuple(outputs)

    @staticmethod
    def vocabulary(batch: Batch, context: TaskContext) -> Vocabulary:
        """The vocabulary of the batch's dataset."""
        dataset = batch["dataset"]
        if dataset not in context.vocabularies:
            raise KeyError(f"no vocabulary for dataset {dataset!r}; known: {sorted(context.vocabularies)}")
        return context.vocabularies[dataset]

    def prompts(self, batch: Batch, context: TaskContext) -> InterfacePrompts:
        """Shared class-name prompts, one class query each, object proposals and the image query."""
        learned: dict[str, int | Tensor] = {OBJECT: self.num_proposals, IMAGE_QUERY: 1}
        if self.class_embeddings == "sentences":
            return InterfacePrompts(learned=learned)
        names = context.encode_text(self.vocabulary(batch, context).class_names)
        device = batch["padding_mask"].device
        return InterfacePrompts(
            learned=learned,
            tokens={
                CLASS_TOKENS: PromptTokens(
                    names.tokens.to(device), names.mask.to(device), sentence=names.sentence.to(device)
                )
            },
            per_prompt={CLASS_QUERY: CLASS_TOKENS},
        )

    def class_logits(
        self,
        output: InterfaceOutput,
        batch: Batch,
        context: TaskContext,
        layer: int = -1,
        sentences: Tensor | None = None,
    ) -> Tensor:
        """float[B,Q,K+1]: a layer's object proposals against the class embeddings and no object.

        ``sentences``: the class embeddings float[K,E] of ``class_embeddings="sentences"`` when the
        caller has them already (they do not depend on the layer); computed here when None.
        """
        if self.class_embeddings == "sentences":
            classes = self.sentence_embeddings(batch, context) if sentences is None else sentences
        else:
            classes = output.layers[layer][CLASS_QUERY]["embeddings"]  # [B,K,E]
        return output.class_logits(OBJECT, classes, layer=layer, no_object=context.interface.no_object())

    def sentence_embeddings(self, batch: Batch, context: TaskContext) -> Tensor:
        """float[K,E]: the class names' sentence vectors through the interface (outside the decoder)."""
        names = self.vocabulary(batch, context).class_names
        sentence = context.sentences(names).to(batch["padding_mask"].device)
        return context.interface.embed_sentences(sentence)

    def losses(
        self, output: InterfaceOutput, batch: Batch, context: TaskContext
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Mask2Former's CE + BCE + Dice on every layer, each matched on its own."""
        num_classes = len(self.vocabulary(batch, context).class_names)
        # sentence-level class embeddings are the same at every layer: computed once
        shared = self.sentence_embeddings(batch, context) if self.class_embeddings == "sentences" else None
        classes = [self.class_logits(output, batch, context, i, shared) for i in range(len(output.layers))]
        masks = [layer[OBJECT]["mask_logits"] for layer in output.layers]
        targets = [{"labels": t["labels"], "masks": t["masks"]} for t in batch["targets"]]
        return segmentation_losses(
            classes,
            masks,
            targets,
            self.matcher,
            num_classes,
            self.weights,
            self.sampling,
            seeds=batch.get("sample_seeds"),
        )

    @torch.no_grad()
    def predict(self, output: InterfaceOutput, batch: Batch, context: TaskContext) -> list[dict[str, Any]]:
        """Per image the requested outputs at its ``image_sizes``.

        ``"semantic"``: int64[h,w]; ``"panoptic"``: (int64[h,w] segment ids, segments); ``"instance"``:
        ``{"masks", "labels", "scores"}`` (see the module-level inference functions).
        """
        is_thing = self.vocabulary(batch, context).thing_classes
        probs = self.class_logits(output, batch, context).float().softmax(dim=-1)  # [B,Q,K+1]
        mask_logits = output.last[OBJECT]["mask_logits"]
        padding = batch["padding_mask"]
        frame = (int(padding.shape[-2]), int(padding.shape[-1]))
        results: list[dict[str, Any]] = []
        for b, (h, w) in enumerate(batch["image_sizes"]):
            top, left = image_origin(padding[b])
            logits = F.interpolate(
                mask_logits[b : b + 1].float(), size=frame, mode="bilinear", align_corners=False
            )
            logits = logits[0, :, top : top + h, left : left + w]
            result: dict[str, Any] = {}
            if "panoptic" in self.outputs:
                result["panoptic"] = panoptic_inference(
                    probs[b], logits, is_thing, self.object_mask_threshold, self.overlap_threshold
                )
            if "instance" in self.outputs:
                result["instance"] = instance_inference(
                    probs[b], logits, is_thing, self.max_detections, self.instance_nms
                )
            if "semantic" in self.outputs:
                result["semantic"] = semantic_inference(probs[b], logits)
            results.append(result)
        return results

    # -- evaluation and outputs ---------------------------------------------------------------------

    def build_metrics(self, dataset: EvaluatedDataset) -> TaskMetrics | None:
        """PQ (panoptic datasets), mask AP and mIoU, each if ``outputs`` has its prediction."""
        return build_segmentation_metrics(dataset, self.outputs)

    def update_metrics(
        self,
        metrics: TaskMetrics,
        batch: Batch,
        predictions: list[dict[str, Any]],
        context: TaskContext,
    ) -> None:
        """Per image: its panoptic map, instances and semantic map against its cropped targets."""
        vocabulary = self.vocabulary(batch, context)
        update_segmentation_metrics(cast(SegmentationMetrics, metrics), vocabulary, batch, predictions)

    def results_sink(
        self, folder: Path, dataset: Any, vocabulary: Any, options: ResultsOptions
    ) -> ResultsSink | None:
        """COCO panoptic PNGs + JSON and COCO instance results, in the dataset's category ids."""
        return SegmentationSink(folder, dataset, category_ids_of(vocabulary), overwrite=options.overwrite)

    def overlay_layers(
        self, prediction: Mapping[str, Any], class_names: Sequence[str]
    ) -> OverlayLayers | None:
        """The panoptic segments when predicted, else the instances, labelled with their class names."""
        if "panoptic" in prediction:
            segment_ids, segments = prediction["panoptic"]
            ids = torch.tensor([int(s["id"]) for s in segments], dtype=torch.int64)
            masks = segment_ids.cpu()[None] == ids[:, None, None]  # [N,h,w]
            labels = [_class_name(class_names, int(s["category"])) for s in segments]
            return OverlayLayers(masks, labels, [float(s["score"]) for s in segments])
        if "instance" in prediction:
            instance = prediction["instance"]
            labels = [_class_name(class_names, int(c)) for c in instance["labels"].tolist()]
            return OverlayLayers(
                instance["masks"].cpu().bool(), labels, instance["scores"].float().cpu().tolist()
            )
        return None

    # -- prediction requests ------------------------------------------------------------------------

    def request_problem(self, request: PredictRequest) -> tuple[str, str] | None:
        """The request's ``mode`` must be among this task's ``outputs``."""
        if request.mode not in self.outputs:
            return (
                "mode",
                f"the {self.name} task of this model gives {list(self.outputs)}, not {request.mode}",
            )
        return None

    def answer(self, request: PredictRequest, batch: Batch, run: TaskRun) -> list[RequestAnswer]:
        """Per image the segments of the request's class names (things, then stuff).

        Panoptic segments, or instance detections scoring at least ``request.min_score``, as the
        request's ``mode`` says.
        """
        names = [*request.classes, *request.stuff]
        vocabulary = Vocabulary(names, [True] * len(request.classes) + [False] * len(request.stuff))
        task_batch = cast(Batch, {**batch, "task": self.name})
        answers = []
        for result in run(task_batch, {batch["dataset"]: vocabulary}):
            masks, indices, scores = _segments(result, request)
            answers.append(RequestAnswer(masks, [names[index] for index in indices], scores, "class"))
        return answers


def _class_name(class_names: Sequence[str], index: int) -> str:
    return class_names[index] if 0 <= index < len(class_names) else f"class {index}"


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
