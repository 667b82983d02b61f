"""Referring segmentation (grounding): one mask per sentence, chosen among grounding proposals.

Every sentence of every image is a ``tokens.language.description`` prompt of its image, read by one
``queries.language.description`` query; ``proposals.vision.grounding`` proposals (initialised from
the object proposals) self-attend to the sentence tokens. The proposal-sentence similarity is the
scaled cosine of their semantic embeddings (:func:`~findlit.interface.heads.class_logits`); FIND's
grounding losses (CE over proposals, BCE and Dice of the matched mask) are summed over every
prediction (deep supervision), each matched on its own by ``match_by_similarity``.

Datasets: ``refcoco`` and ``refcoco_absent``. Metrics: cIoU, mIoU and P@0.5/0.7/0.9 of each
sentence's predicted mask against its target mask. Test results: one entry per sentence with its ref
id (:class:`~findlit.outputs.result_sinks.GroundingSink`). Overlays: each sentence's mask, labelled
with the sentence (shortened). ``predict`` requests: every free-text prompt is a sentence of every
image, and gets one mask each.

The helpers here (prompt encoding, per-layer similarity, per-sentence prediction, the grounding
metrics' update) are shared with the interleave task, whose phrases play the part of the sentences.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from findlit.data.collate import Batch, image_targets
from findlit.data.predict_config import PredictRequest
from findlit.interface.find import InterfaceOutput, InterfacePrompts, PromptTokens
from findlit.interface.heads import class_logits
from findlit.losses import HungarianMatcher, LossWeights, PointSampling, grounding_losses
from findlit.losses.points import DEFAULT_NUM_POINTS
from findlit.metrics import GroundingMetrics, grounding_metrics
from findlit.nearest_resize import resize_nearest
from findlit.outputs.overlay import shorten
from findlit.outputs.result_sinks import GroundingSink, ResultsOptions, ResultsSink
from findlit.tasks.base import (
    EvaluatedDataset,
    OverlayLayers,
    RequestAnswer,
    Task,
    TaskContext,
    TaskMetrics,
    TaskRun,
)
from findlit.tasks.registry import register_task

GROUNDING_PROPOSALS = "proposals.vision.grounding"
DESCRIPTION_TOKENS = "tokens.language.description"
DESCRIPTION_QUERIES = "queries.language.description"


def encode_per_image(
    texts: Sequence[Sequence[str]], context: TaskContext, device: torch.device
) -> PromptTokens:
    """Encode the strings of every image as prompts owned by their image.

    Args:
        texts: per image its strings (any number, zero included; at least one string in the batch).
        context: supplies ``encode_text``.
        device: where the tokens go (the batch's device).

    Returns:
        :class:`PromptTokens` of the strings in image order, ``image`` = the owner of each.

    """
    flat = [text for image_texts in texts for text in image_texts]
    if not flat:
        raise ValueError("the batch has no text prompt at all")
    owners = torch.tensor(
        [b for b, image_texts in enumerate(texts) for _ in image_texts], dtype=torch.long, device=device
    )
    embeddings = context.encode_text(flat)
    return PromptTokens(
        embeddings.tokens.to(device),
        embeddings.mask.to(device),
        image=owners,
        sentence=embeddings.sentence.to(device),
    )


def layer_similarities(output: InterfaceOutput, proposal_type: str, query_type: str) -> list[Tensor]:
    """Per prediction, float[B,Q,S_max]: scaled cosine of the proposals with each prompt's query."""
    return [
        class_logits(layer[proposal_type]["embeddings"], layer[query_type]["embeddings"], output.logit_scale)
        for layer in output.layers
    ]


def best_proposal_predictions(
    similarity: Tensor,
    mask_logits: Tensor,
    valid: Tensor,
    batch: Batch,
) -> list[tuple[Tensor, Tensor]]:
    """Per image and prompt, the mask of its most similar proposal and a score.

    Args:
        similarity: float[B,Q,S_max] of the last prediction.
        mask_logits: float[B,Q,H/4,W/4] of the same proposals.
        valid: bool[B,S_max], the real prompts.
        batch: supplies the padded frame and ``image_sizes``.

    Returns:
        per image ``(masks bool[S_i,h_i,w_i], scores float[S_i])``: the mask is sigmoid > 0.5 of the
        top proposal's logits upsampled (bilinear) to the padded frame and cropped to the image; the
        score is the softmax over proposals of the similarity at that proposal times the mean
        probability inside the mask.

    """
    frame = tuple(int(s) for s in batch["padding_mask"].shape[-2:])
    results = []
    for b, (h, w) in enumerate(batch["image_sizes"]):
        sim = similarity[b][:, valid[b].to(similarity.device)].float()  # [Q,S_i]
        if sim.shape[1] == 0:
            empty = torch.zeros(0, h, w, dtype=torch.bool, device=similarity.device)
            results.append((empty, torch.zeros(0, device=similarity.device)))
            continue
        prob = sim.softmax(dim=0)
        top = prob.argmax(dim=0)  # [S_i]
        top_prob = prob.gather(0, top[None])[0]
        logits = F.interpolate(
            mask_logits[b, top][None].float(), size=frame, mode="bilinear", align_corners=False
        )[0, :, :h, :w]
        mask_prob = logits.sigmoid()
        masks = mask_prob > 0.5
        inside = (mask_prob * masks).flatten(1).sum(1) / masks.flatten(1).sum(1).clamp(min=1)
        results.append((masks, top_prob * inside))
    return results


def update_grounding_metrics(
    metrics: GroundingMetrics, batch: Batch, predictions: list[dict[str, Any]], targets: Sequence[Tensor]
) -> None:
    """Feed each image's predicted masks and its target masks to ``metrics``.

    At the image's size on disk when its target has the decoded masks (``original``, evaluation
    datasets): the predictions are resized there as ``findlit test`` writes them; else at the
    network's input size, the targets cropped to the image.

    Args:
        metrics: the grounding metrics of the dataset.
        batch: supplies each image's targets (:func:`~findlit.data.collate.image_targets`).
        predictions: per image ``{"masks": bool[S,h,w], ...}``.
        targets: per image int64[S], the index in ``masks`` of each prediction's target.

    """
    for b, (prediction, index) in enumerate(zip(predictions, targets, strict=True)):
        masks = prediction["masks"]
        if masks.shape[0] == 0:
            continue
        scored = image_targets(batch, b)["masks"]
        truth = scored[index.to(scored.device)]
        # to the size on disk; nothing to do when the targets were cropped to the image instead
        masks = resize_nearest(masks, truth.shape[-2:])
        metrics.update(masks, truth.to(masks.device))


def text_overlay(prediction: Mapping[str, Any], texts: str) -> OverlayLayers | None:
    """Each mask of ``prediction`` labelled with its text (``prediction[texts]``, shortened)."""
    if "masks" not in prediction:
        return None
    labels = [shorten(str(text)) for text in prediction[texts]]
    return OverlayLayers(
        prediction["masks"].cpu().bool(), labels, prediction["scores"].float().cpu().tolist()
    )


@register_task
class GroundingTask(Task):
    """FIND's grounding task over ``tokens.language.description`` and ``proposals.vision.grounding``.

    Args:
        num_proposals: grounding proposals per image (at most the interface's ``num_proposals``).
        weights: loss weights; the ``grounding_*`` ones are used (FIND: CE 0.4, BCE 1, Dice 1).
        num_points: points of the matching costs and of the mask losses.

    """

    name = "grounding"
    formats = ("refcoco", "refcoco_absent")
    serves = ("prompts",)

    def __init__(
        self,
        num_proposals: int = 100,
        weights: LossWeights = LossWeights(),  # noqa: B008 (a frozen dataclass)
        num_points: int = DEFAULT_NUM_POINTS,
    ):
        super().__init__()
        self.num_proposals = num_proposals
        self.weights = weights
        self.matcher = HungarianMatcher(num_points=num_points)
        self.sampling = PointSampling(num_points=num_points)

    def prompts(self, batch: Batch, context: TaskContext) -> InterfacePrompts:
        """Each sentence a description prompt of its image, one query per sentence, learned proposals."""
        sentences = [list(target["sentences"]) for target in batch["targets"]]
        tokens = encode_per_image(sentences, context, batch["padding_mask"].device)
        return InterfacePrompts(
            learned={GROUNDING_PROPOSALS: self.num_proposals},
            tokens={DESCRIPTION_TOKENS: tokens},
            per_prompt={DESCRIPTION_QUERIES: DESCRIPTION_TOKENS},
        )

    def losses(
        self, output: InterfaceOutput, batch: Batch, context: TaskContext
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Grounding CE + BCE + Dice on every prediction; targets = each sentence's mask."""
        targets = [
            {"masks": target["masks"][target["sentence_targets"].to(target["masks"].device)]}
            for target in batch["targets"]
        ]
        return grounding_losses(
            layer_similarities(output, GROUNDING_PROPOSALS, DESCRIPTION_QUERIES),
            [layer[GROUNDING_PROPOSALS]["mask_logits"] for layer in output.layers],
            output.last[DESCRIPTION_QUERIES]["valid"],
            targets,
            self.matcher,
            self.weights,
            self.sampling,
            seeds=batch.get("sample_seeds"),
        )

    def predict(self, output: InterfaceOutput, batch: Batch, context: TaskContext) -> list[dict[str, Any]]:
        """Per image ``{"masks": bool[S,h,w], "scores": float[S], "sentences": list[str]}``."""
        last = output.last
        similarity = class_logits(
            last[GROUNDING_PROPOSALS]["embeddings"],
            last[DESCRIPTION_QUERIES]["embeddings"],
            output.logit_scale,
        )
        per_image = best_proposal_predictions(
            similarity,
            output.last[GROUNDING_PROPOSALS]["mask_logits"],
            output.last[DESCRIPTION_QUERIES]["valid"],
            batch,
        )
        return [
            {"masks": masks, "scores": scores, "sentences": list(target["sentences"])}
            for (masks, scores), target in zip(per_image, batch["targets"], strict=True)
        ]

    # -- evaluation and outputs ---------------------------------------------------------------------

    def build_metrics(self, dataset: EvaluatedDataset) -> TaskMetrics | None:
        """cIoU, mIoU, P@0.5/0.7/0.9 (:func:`~findlit.metrics.grounding_metrics`)."""
        return grounding_metrics()

    def update_metrics(
        self,
        metrics: TaskMetrics,
        batch: Batch,
        predictions: list[dict[str, Any]],
        context: TaskContext,
    ) -> None:
        """Each sentence's mask against the mask it refers to."""
        grounding = cast(GroundingMetrics, metrics["grounding"])  # type: ignore[index]
        targets = [target["sentence_targets"] for target in batch["targets"]]
        update_grounding_metrics(grounding, batch, predictions, targets)

    def results_sink(
        self, folder: Path, dataset: Any, vocabulary: Any, options: ResultsOptions
    ) -> ResultsSink | None:
        """One result per sentence, with its ref id."""
        return GroundingSink(folder, dataset, overwrite=options.overwrite)

    def overlay_layers(
        self, prediction: Mapping[str, Any], class_names: Sequence[str]
    ) -> OverlayLayers | None:
        """Each sentence's mask, labelled with the sentence."""
        return text_overlay(prediction, "sentences")

    # -- prediction requests ------------------------------------------------------------------------

    def answer(self, request: PredictRequest, batch: Batch, run: TaskRun) -> list[RequestAnswer]:
        """Per image one mask per free-text prompt (the prompts are every image's sentences)."""
        sentences = [{"sentences": list(request.prompts)} for _ in batch["image_ids"]]
        task_batch = cast(Batch, {**batch, "task": self.name, "targets": sentences})
        answers = []
        for result in run(task_batch, {}):
            scores = [float(s) for s in result["scores"].tolist()]
            answers.append(RequestAnswer(result["masks"], list(request.prompts), scores, "prompt"))
        return answers
