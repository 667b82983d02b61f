"""Interleave grounding and retrieval (FIND-Bench): phrases of entity sentences point at segments.

An image's ``entities`` are sentences whose ``spans`` mark phrases; phrase k of a sentence refers to
``masks[targets[k]]``. Every phrase of an image (sentences in order, spans in order) becomes one
``tokens.interleave.legend`` prompt of that image, read by its own ``queries.interleave.entity``
query (the per-phrase query type of the default prototype; it cross-attends to the legend tokens).
``proposals.interleave.entity`` (initialised from the object proposals) self-attend to the legend
tokens; each phrase is grounded as a grounding sentence: ``match_by_similarity`` picks a proposal per
phrase and ``grounding_losses`` gives CE over proposals, BCE and Dice on every prediction.

With ``retrieval=True`` one learned ``queries.interleave.legend`` query per image reads all of its
image's legend tokens (the whole interleaved prompt) and one ``queries.vision.image`` query reads the
image; a symmetric InfoNCE pairs them on the last prediction, weighted by
``LossWeights.interleave_retrieval`` (8). Every image of the batch is a row (so the per-rank shapes
agree under DDP, whose gather needs them equal); an image without phrases has a legend query that
reads no token, so entity samples are expected to carry at least one phrase.

Visual prompts. FIND replaces a phrase, with some probability in training, by a visual prompt: points
sampled from the referred segment and encoded on the pixel decoder's features. Those features exist
only inside ``FINDInterface.forward``, after :meth:`InterleaveTask.prompts` has returned (a batch of
images does not even carry the frozen pyramid, which the module's vision encoder computes), so the
task cannot build such tokens. Every phrase is therefore given as text; ``visual_prompt_p`` is kept
(validated and stored) so that configurations stay valid, and has no effect with this interface.
Supporting it needs an interface hook that encodes mask prompts once its pixel features exist.

Datasets: ``find_entity``. Metrics: the grounding metrics of each phrase against its referred
segment and, with the retrieval queries, the interleave retrieval recall IR@k / TR@k of each image's
legend query (the whole interleaved prompt) against every image query of the dataset. Test results:
none (no standard format). Overlays: each phrase's mask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from findlit.data.collate import Batch
from findlit.interface.find import IMAGE_QUERY, InterfaceOutput, InterfacePrompts
from findlit.interface.heads import class_logits
from findlit.losses import HungarianMatcher, LossWeights, PointSampling, grounding_losses, symmetric_infonce
from findlit.losses.points import DEFAULT_NUM_POINTS
from findlit.metrics import GroundingMetrics, RetrievalRecall, grounding_metrics, interleave_metrics
from findlit.tasks.base import EvaluatedDataset, OverlayLayers, Task, TaskContext, TaskMetrics
from findlit.tasks.grounding import (
    best_proposal_predictions,
    encode_per_image,
    layer_similarities,
    text_overlay,
    update_grounding_metrics,
)
from findlit.tasks.registry import register_task

ENTITY_PROPOSALS = "proposals.interleave.entity"
LEGEND_TOKENS = "tokens.interleave.legend"
ENTITY_QUERIES = "queries.interleave.entity"
LEGEND_QUERIES = "queries.interleave.legend"


def phrases_of(target: dict[str, Any]) -> tuple[list[str], list[int]]:
    """The phrases of one image's ``entities`` (sentences, then spans, in order) and their mask indices."""
    texts: list[str] = []
    indices: list[int] = []
    for entity in target["entities"]:
        sentence = entity["sentence"]
        for (start, end), index in zip(entity["spans"], entity["targets"], strict=True):
            texts.append(sentence[start:end])
            indices.append(int(index))
    return texts, indices


@register_task
class InterleaveTask(Task):
    """FIND's interleave task: entity grounding of phrases (+ legend-image InfoNCE).

    Args:
        num_proposals: entity proposals per image (at most the interface's ``num_proposals``).
        weights: loss weights; ``grounding_*`` and ``interleave_retrieval`` are used.
        num_points: points of the matching costs and of the mask losses.
        visual_prompt_p: FIND's probability of a visual prompt in place of a phrase in training; kept
            for configuration compatibility, without effect (see the module docstring).
        retrieval: add the legend and image queries and the InfoNCE term.

    """

    name = "interleave"
    formats = ("find_entity",)

    def __init__(
        self,
        num_proposals: int = 100,
        weights: LossWeights = LossWeights(),  # noqa: B008 (a frozen dataclass)
        num_points: int = DEFAULT_NUM_POINTS,
        visual_prompt_p: float = 0.5,
        retrieval: bool = True,
    ):
        super().__init__()
        if not 0.0 <= visual_prompt_p <= 1.0:
            raise ValueError(f"visual_prompt_p must be in [0, 1], got {visual_prompt_p}")
        self.num_proposals = num_proposals
        self.weights = weights
        self.visual_prompt_p = visual_prompt_p
        self.retrieval = retrieval
        self.matcher = HungarianMatcher(num_points=num_points)
        self.sampling = PointSampling(num_points=num_points)

    def prompts(self, batch: Batch, context: TaskContext) -> InterfacePrompts:
        """Each phrase a legend prompt of its image with its entity query; entity proposals; legend/image."""
        phrases = [phrases_of(target)[0] for target in batch["targets"]]
        tokens = encode_per_image(phrases, context, batch["padding_mask"].device)
        learned: dict[str, int | Tensor] = {ENTITY_PROPOSALS: self.num_proposals}
        if self.retrieval:
            learned[LEGEND_QUERIES] = 1
            learned[IMAGE_QUERY] = 1
        return InterfacePrompts(
            learned=learned,
            tokens={LEGEND_TOKENS: tokens},
            per_prompt={ENTITY_QUERIES: LEGEND_TOKENS},
        )

    def losses(
        self, output: InterfaceOutput, batch: Batch, context: TaskContext
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Grounding CE + BCE + Dice per phrase on every prediction; + InfoNCE legend vs image (last)."""
        targets = []
        for target in batch["targets"]:
            masks = target["masks"]
            indices = torch.tensor(phrases_of(target)[1], dtype=torch.long, device=masks.device)
            targets.append({"masks": masks[indices]})
        total, logs = grounding_losses(
            layer_similarities(output, ENTITY_PROPOSALS, ENTITY_QUERIES),
            [layer[ENTITY_PROPOSALS]["mask_logits"] for layer in output.layers],
            output.last[ENTITY_QUERIES]["valid"],
            targets,
            self.matcher,
            self.weights,
            self.sampling,
            seeds=batch.get("sample_seeds"),
        )
        last = output.last
        if IMAGE_QUERY in last and LEGEND_QUERIES in last:
            image = last[IMAGE_QUERY]["embeddings"][:, 0]
            legend = last[LEGEND_QUERIES]["embeddings"][:, 0]
            contrastive = symmetric_infonce(image, legend, output.logit_scale)
            total = total + self.weights.interleave_retrieval * contrastive
            logs["interleave_retrieval"] = contrastive.detach()
        return total, logs

    def predict(self, output: InterfaceOutput, batch: Batch, context: TaskContext) -> list[dict[str, Any]]:
        """Per image ``{"masks": bool[K,h,w], "scores": float[K], "phrases": list[str]}``, K phrases.

        With the retrieval queries (``retrieval=True``) also ``"legend_embedding": float[E]`` (the
        query that read the whole interleaved prompt) and ``"image_embedding": float[E]``, both
        L2-normalised: interleave retrieval ranks the images of a dataset against each legend (the
        pairs the InfoNCE term trains), as image-text retrieval ranks them against each caption.
        """
        last = output.last
        similarity = class_logits(
            last[ENTITY_PROPOSALS]["embeddings"], last[ENTITY_QUERIES]["embeddings"], output.logit_scale
        )
        per_image = best_proposal_predictions(
            similarity, last[ENTITY_PROPOSALS]["mask_logits"], last[ENTITY_QUERIES]["valid"], batch
        )
        results: list[dict[str, Any]] = [
            {"masks": masks, "scores": scores, "phrases": phrases_of(target)[0]}
            for (masks, scores), target in zip(per_image, batch["targets"], strict=True)
        ]
        if IMAGE_QUERY in last and LEGEND_QUERIES in last:
            images = F.normalize(last[IMAGE_QUERY]["embeddings"][:, 0].float(), dim=-1)  # [B,E]
            legends = F.normalize(last[LEGEND_QUERIES]["embeddings"][:, 0].float(), dim=-1)  # [B,E]
            for b, result in enumerate(results):
                result["image_embedding"] = images[b]
                result["legend_embedding"] = legends[b]
        return results

    # -- evaluation and outputs ---------------------------------------------------------------------

    def build_metrics(self, dataset: EvaluatedDataset) -> TaskMetrics | None:
        """Grounding metrics of the phrases, plus interleave retrieval recall with ``retrieval``."""
        return interleave_metrics() if self.retrieval else grounding_metrics()

    def update_metrics(
        self,
        metrics: TaskMetrics,
        batch: Batch,
        predictions: list[dict[str, Any]],
        context: TaskContext,
    ) -> None:
        """Each phrase's mask against its segment; each legend query against every image query."""
        if "retrieval" in metrics and "legend_embedding" in predictions[0]:  # type: ignore[operator]
            recall = cast(RetrievalRecall, metrics["retrieval"])  # type: ignore[index]
            images = torch.stack([p["image_embedding"] for p in predictions])
            legends = torch.stack([p["legend_embedding"] for p in predictions])
            ids = torch.tensor(batch["image_ids"], device=images.device)
            recall.update(images, ids, legends, ids)
        grounding = cast(GroundingMetrics, metrics["grounding"])  # type: ignore[index]
        targets = [torch.as_tensor(phrases_of(target)[1], dtype=torch.int64) for target in batch["targets"]]
        update_grounding_metrics(grounding, batch, predictions, targets)

    def overlay_layers(
        self, prediction: Mapping[str, Any], class_names: Sequence[str]
    ) -> OverlayLayers | None:
        """Each phrase's mask, labelled with the phrase."""
        return text_overlay(prediction, "phrases")
