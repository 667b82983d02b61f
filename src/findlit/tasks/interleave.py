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

Visual entities (FIND's ``VISUAL_PROB``, ``visual_prompt_p``): each phrase is, with that probability,
an "[INTERACTIVE]" visual prompt instead (:mod:`findlit.interactive.entities`: drawn per phrase
from the sample's seed, in training and in evaluation, so evaluation repeats). Its legend prompt is
the encoded placeholder text plus the image query's learned content (``stands_for_visual``), and it
reads, through cross-attention, the ``tokens.vision.spatial_`` tokens of a stroke drawn from its
segment on the pixel decoder's features, as FIND's; its query scores the proposals by the raw dot
product of their mask embeddings, as FIND's (``visual_similarity``). For grounding the stroke is on
the phrase's own segment. For interleave retrieval (UX-Decoder/FIND ``modeling/architectures/find_model.py``,
``evaluate_retrieval_interleave``) evaluation draws it on the phrase's ``reference``, a segment of
the same kind in another image, whose features are computed with the batch (``TaskContext.features``):
a stroke on the image itself would show the legend query the very image it must retrieve. Training
follows FIND: one forward, the legend query reading the own-segment strokes.

Datasets: ``find_entity``. Metrics: the grounding metrics of each phrase against its referred
segment, text phrases (``cIoU``, ``P@0.5``, ...) and visual ones (``visual_cIoU``, ...) apart, and,
with the retrieval queries, the interleave retrieval recall of each image's legend query (the whole
interleaved prompt) against every image query of the dataset: ``IR@k`` / ``TR@k`` with every phrase
as text, ``visual_IR@k`` / ``visual_TR@k`` over the legends with at least one visual entity drawn on
its reference (from images: a dataset read from a feature cache has no reference images). Test
results: none (no standard format). Overlays: each phrase's mask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from findlit.data.collate import Batch, collate_samples
from findlit.data.sample import ReferenceImage, Sample
from findlit.interactive.entities import VISUAL_PLACEHOLDER, draw_entity_strokes
from findlit.interactive.strokes import StrokeSampling
from findlit.interface.find import IMAGE_QUERY, InterfaceOutput, InterfacePrompts, PromptTokens
from findlit.interface.heads import class_logits
from findlit.interface.pixel_decoder import PixelDecoderOutput
from findlit.interface.visual_prompts import VisualPrompts, VisualTokens
from findlit.losses import HungarianMatcher, LossWeights, PointSampling, grounding_losses, symmetric_infonce
from findlit.losses.points import DEFAULT_NUM_POINTS
from findlit.metrics import GroundingMetrics, RetrievalRecall, interleave_metrics
from findlit.tasks.base import EvaluatedDataset, OverlayLayers, Task, TaskContext, TaskMetrics
from findlit.tasks.grounding import (
    best_proposal_predictions,
    encode_per_image,
    text_overlay,
    update_grounding_metrics,
)
from findlit.tasks.registry import register_task
from findlit.tasks.seeds import batch_seeds, points_generator

ENTITY_PROPOSALS = "proposals.interleave.entity"
LEGEND_TOKENS = "tokens.interleave.legend"
ENTITY_QUERIES = "queries.interleave.entity"
LEGEND_QUERIES = "queries.interleave.legend"
ENTITY_VISUAL_TOKENS = "tokens.vision.spatial_"
"""FIND's ``tokens_vision_spatial_``: the visual entities' stroke tokens, read by the legend tokens."""

VISUAL_LEGEND = "visual_legend"
"""``InterfaceOutput.extras`` key: float[B,E] legend embeddings with visual entities drawn on their
references, and bool[B] which images have such an entity (evaluation)."""

STROKES = "entity_strokes"
"""``InterfaceOutput.extras`` key: the :data:`Strokes` a run drew (losses and predictions reuse them)."""

VISUAL_SIMILARITIES = ("mask_embeddings", "semantic")
"""How a visual entity's query scores the proposals (``InterleaveTask.visual_similarity``)."""

Strokes = list[list[np.ndarray | None]]
"""Per image, per phrase: its stroke bool[H,W] (a visual entity) or None (text)."""


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


@dataclass
class _Reference:
    """A visual entity's stroke on its reference image: owner image b, phrase k, the reference's row."""

    image: int
    phrase: int
    row: int
    stroke: np.ndarray


@register_task
class InterleaveTask(Task):
    """FIND's interleave task: entity grounding of phrases, text or visual (+ legend-image InfoNCE).

    Args:
        num_proposals: entity proposals per image (at most the interface's ``num_proposals``).
        weights: loss weights; ``grounding_*`` and ``interleave_retrieval`` are used.
        num_points: points of the matching costs and of the mask losses.
        visual_prompt_p: probability that a phrase is a visual prompt (FIND's ``VISUAL_PROB``: 0.5),
            in training and evaluation; above 0 the interface is built with visual prompts.
        retrieval: add the legend and image queries and the InfoNCE term.
        strokes: the visual entities' strokes (FIND draws them with the interactive task's sampler).
        visual_similarity: how a visual entity's query scores the proposals: ``"mask_embeddings"``
            (FIND: the raw dot product of their mask embeddings, ``pred_imaskembs @
            pred_entity_pixel`` in ``loss_interleave`` of UX-Decoder/FIND
            ``modeling/modules/criterion.py``, the space in which spatial queries find their
            segment) or ``"semantic"`` (the text entities' scaled cosine in the joint space).

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
        strokes: StrokeSampling = StrokeSampling(),  # noqa: B008 (a frozen dataclass)
        visual_similarity: str = "mask_embeddings",
    ):
        super().__init__()
        if not 0.0 <= visual_prompt_p <= 1.0:
            raise ValueError(f"visual_prompt_p must be in [0, 1], got {visual_prompt_p}")
        if visual_similarity not in VISUAL_SIMILARITIES:
            raise ValueError(
                f"visual_similarity must be one of {list(VISUAL_SIMILARITIES)}, got {visual_similarity!r}"
            )
        self.visual_similarity = visual_similarity
        self.num_proposals = num_proposals
        self.weights = weights
        self.visual_prompt_p = visual_prompt_p
        self.retrieval = retrieval
        self.strokes = strokes
        self.matcher = HungarianMatcher(num_points=num_points)
        self.sampling = PointSampling(num_points=num_points)

    @property
    def uses_visual_prompts(self) -> bool:
        """Whether phrases may be visual prompts (``visual_prompt_p > 0``)."""
        return self.visual_prompt_p > 0

    # -- prompts ------------------------------------------------------------------------------------

    def own_strokes(self, batch: Batch) -> Strokes:
        """Per image and phrase, its stroke on its own segment (in the batch's frame) or None."""
        strokes: Strokes = []
        for target, seed in zip(batch["targets"], batch_seeds(batch), strict=True):
            _, indices = phrases_of(target)
            if self.visual_prompt_p <= 0 or not indices:
                strokes.append([None] * len(indices))
                continue
            masks = target["masks"].cpu().numpy().astype(bool)
            segments: list[np.ndarray | None] = [masks[i] for i in indices]
            strokes.append(draw_entity_strokes(segments, seed, self.visual_prompt_p, self.strokes))
        return strokes

    def _legend(self, batch: Batch, context: TaskContext, visual: Sequence[Sequence[bool]]) -> PromptTokens:
        """Every phrase a legend prompt of its image; a visual one as FIND's placeholder (+ image query)."""
        texts = [
            [
                VISUAL_PLACEHOLDER if is_visual else text
                for text, is_visual in zip(phrases, flags, strict=True)
            ]
            for phrases, flags in zip((phrases_of(t)[0] for t in batch["targets"]), visual, strict=True)
        ]
        tokens = encode_per_image(texts, context, batch["padding_mask"].device)
        flags = [flag for image_flags in visual for flag in image_flags]
        if any(flags):
            tokens.stands_for_visual = torch.tensor(flags, dtype=torch.bool, device=tokens.mask.device)
        return tokens

    def _prompts(
        self, batch: Batch, context: TaskContext, strokes: Strokes, legend: bool
    ) -> InterfacePrompts:
        """Entity proposals and queries over the legend, own-segment strokes; legend/image queries."""
        visual = [[stroke is not None for stroke in image] for image in strokes]
        tokens = self._legend(batch, context, visual)
        learned: dict[str, int | Tensor] = {ENTITY_PROPOSALS: self.num_proposals}
        if self.retrieval:
            learned[IMAGE_QUERY] = 1
            if legend:
                learned[LEGEND_QUERIES] = 1
        prompts = InterfacePrompts(
            learned=learned,
            tokens={LEGEND_TOKENS: tokens},
            per_prompt={ENTITY_QUERIES: LEGEND_TOKENS},
            generator=points_generator(batch, 0),
        )
        if any(any(flags) for flags in visual):
            assert tokens.image is not None  # per-image prompts
            frame = tuple(int(n) for n in batch["padding_mask"].shape[-2:])
            positive = torch.zeros(tokens.num_prompts, *frame, dtype=torch.bool)
            flat = [stroke for image in strokes for stroke in image]
            for n, stroke in enumerate(flat):
                if stroke is not None:
                    positive[n] = torch.from_numpy(stroke)
            prompts.visual = {
                ENTITY_VISUAL_TOKENS: VisualPrompts(positive.to(tokens.image.device), tokens.image)
            }
        return prompts

    def prompts(self, batch: Batch, context: TaskContext) -> InterfacePrompts:
        """Phrases as legend prompts with their entity queries; entity proposals; legend and image queries.

        Visual phrases come with their own-segment strokes. With ``retrieval`` the legend query reads
        every legend prompt, visual ones included (FIND's training).
        """
        return self._prompts(batch, context, self.own_strokes(batch), legend=True)

    def run(self, batch: Batch, features: dict[str, Tensor], context: TaskContext) -> InterfaceOutput:
        """One forward in training (FIND's); in evaluation with visual entities, retrieval apart.

        In evaluation the legend queries read every phrase as text in a forward of their own (it reads
        no image feature), so that the own-segment strokes do not show them their image; a third
        forward, when the batch carries reference images, reads the visual entities from those
        (:data:`VISUAL_LEGEND` in the output's ``extras``).
        """
        strokes = self.own_strokes(batch)
        any_visual = any(stroke is not None for image in strokes for stroke in image)
        interface = context.interface
        padding = batch["padding_mask"]
        if self.training or not self.retrieval:
            output = interface(features, self._prompts(batch, context, strokes, legend=True), padding)
            output.extras[STROKES] = strokes
            return output
        pixel = interface.decode_pixels(features, padding)
        output = interface(
            features, self._prompts(batch, context, strokes, legend=not any_visual), padding, pixel=pixel
        )
        if any_visual:
            text = [[False] * len(image) for image in strokes]
            legend = interface(features, self._legend_prompts(batch, context, text), padding, pixel=pixel)
            for layer, legend_layer in zip(output.layers, legend.layers, strict=True):
                layer[LEGEND_QUERIES] = legend_layer[LEGEND_QUERIES]
        visual_legend = self._reference_legend(batch, context, features, pixel)
        if visual_legend is not None:
            output.extras[VISUAL_LEGEND] = visual_legend
        output.extras[STROKES] = strokes
        return output

    def _strokes_of(self, output: InterfaceOutput, batch: Batch) -> Strokes:
        """The strokes ``output``'s run drew, else drawn again (the same: they are seeded)."""
        strokes = output.extras.get(STROKES)
        return cast(Strokes, strokes) if strokes is not None else self.own_strokes(batch)

    def _legend_prompts(
        self,
        batch: Batch,
        context: TaskContext,
        visual: Sequence[Sequence[bool]],
        tokens: VisualTokens | None = None,
    ) -> InterfacePrompts:
        """The legend queries alone over the legend prompts (``visual`` ones reading ``tokens``)."""
        prompts = InterfacePrompts(
            learned={LEGEND_QUERIES: 1},
            tokens={LEGEND_TOKENS: self._legend(batch, context, visual)},
            generator=points_generator(batch, 1),
        )
        if tokens is not None:
            prompts.visual_tokens = {ENTITY_VISUAL_TOKENS: tokens}
        return prompts

    def _references(self, batch: Batch) -> tuple[list[_Reference], list[ReferenceImage]]:
        """The visual entities drawn on their references, and the reference images (one row each)."""
        drawn: list[_Reference] = []
        images: list[ReferenceImage] = []
        for b, (target, seed) in enumerate(zip(batch["targets"], batch_seeds(batch), strict=True)):
            references: list[ReferenceImage | None] = target.get("reference_images") or []
            segments = [None if ref is None else ref["mask"].cpu().numpy().astype(bool) for ref in references]
            for k, stroke in enumerate(
                draw_entity_strokes(segments, seed, self.visual_prompt_p, self.strokes)
            ):
                if stroke is not None:
                    reference = references[k]
                    assert reference is not None  # a stroke needs a segment
                    drawn.append(_Reference(b, k, len(images), stroke))
                    images.append(reference)
        return drawn, images

    def _reference_legend(
        self, batch: Batch, context: TaskContext, features: dict[str, Tensor], pixel: PixelDecoderOutput
    ) -> tuple[Tensor, Tensor] | None:
        """Legend embeddings float[B,E] with visual entities read on their references; bool[B] which.

        None without reference images in the batch, without a way to compute their features
        (``TaskContext.features``), or when no phrase is visual.
        """
        if self.visual_prompt_p <= 0 or context.features is None:
            return None
        drawn, images = self._references(batch)
        if not drawn:
            return None
        device = batch["padding_mask"].device
        samples: list[Sample] = [
            Sample(
                task=batch["task"],
                dataset=batch["dataset"],
                image_id=reference.row,
                orig_size=tuple(int(n) for n in image["image"].shape[-2:]),  # type: ignore[typeddict-item]
                image=image["image"],
                masks=torch.from_numpy(reference.stroke)[None],
            )
            for reference, image in zip(drawn, images, strict=True)
        ]
        references = collate_samples(samples)
        ref_padding = references["padding_mask"].to(device)
        ref_batch = cast(
            Batch, {**references, "images": references["images"].to(device), "padding_mask": ref_padding}
        )
        interface = context.interface
        ref_pixel = interface.decode_pixels(context.features(ref_batch), ref_padding)
        # one prompt per phrase of the batch (in legend order, so ranks match the legend prompts);
        # a phrase without a reference stroke has an empty mask, hence no token
        counts = [len(phrases_of(target)[1]) for target in batch["targets"]]
        starts = np.cumsum([0, *counts])
        frame = tuple(int(n) for n in ref_padding.shape[-2:])
        positive = torch.zeros(int(starts[-1]), *frame, dtype=torch.bool, device=device)
        rows = torch.zeros(int(starts[-1]), dtype=torch.long, device=device)
        visual = [[False] * count for count in counts]
        for reference, target in zip(drawn, references["targets"], strict=True):
            n = int(starts[reference.image]) + reference.phrase
            positive[n] = target["masks"][0].to(device)
            rows[n] = reference.row
            visual[reference.image][reference.phrase] = True
        encoded = interface.encode_visual_prompts(
            ref_pixel,
            {ENTITY_VISUAL_TOKENS: VisualPrompts(positive, rows)},
            ref_padding,
            points_generator(batch, 2),
        )[ENTITY_VISUAL_TOKENS]
        owners = torch.repeat_interleave(
            torch.arange(len(counts), device=device), torch.tensor(counts, device=device)
        )
        tokens = VisualTokens(encoded.tokens, encoded.positions, encoded.valid, owners)
        legend = interface(
            features, self._legend_prompts(batch, context, visual, tokens), batch["padding_mask"], pixel=pixel
        )
        has_visual = torch.tensor([any(flags) for flags in visual], dtype=torch.bool, device=device)
        return legend.last[LEGEND_QUERIES]["embeddings"][:, 0], has_visual

    # -- losses and predictions ---------------------------------------------------------------------

    def similarities(
        self, output: InterfaceOutput, strokes: Strokes, layers: Sequence[int] | None = None
    ) -> list[Tensor]:
        """Per prediction (all, or ``layers``) float[B,Q,S_max]: each entity proposal's logit per phrase.

        Text phrases: the scaled cosine of the semantic embeddings. Visual phrases (``strokes``): with
        ``visual_similarity="mask_embeddings"`` the raw dot product of the mask embeddings, as FIND.
        """
        chosen = [output.layers[i] for i in (layers if layers is not None else range(len(output.layers)))]
        text = [
            class_logits(
                layer[ENTITY_PROPOSALS]["embeddings"], layer[ENTITY_QUERIES]["embeddings"], output.logit_scale
            )
            for layer in chosen
        ]
        if self.visual_similarity == "semantic" or not any(s is not None for image in strokes for s in image):
            return text
        width = int(chosen[0][ENTITY_QUERIES]["valid"].shape[1])
        visual = torch.zeros(len(strokes), width, dtype=torch.bool)
        for b, image in enumerate(strokes):
            for k, stroke in enumerate(image):
                visual[b, k] = stroke is not None
        visual = visual.to(text[0].device)[:, None, :]  # [B,1,S_max]
        return [
            torch.where(
                visual,
                layer[ENTITY_PROPOSALS]["mask_embeddings"]
                @ layer[ENTITY_QUERIES]["mask_embeddings"].transpose(1, 2),
                cosine,
            )
            for layer, cosine in zip(chosen, text, strict=True)
        ]

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
            self.similarities(output, self._strokes_of(output, batch)),
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
        """Per image ``{"masks": bool[K,h,w], "scores": float[K], "phrases": list[str], "visual": bool[K]}``.

        K phrases; ``visual`` marks those given as visual prompts (their own-segment strokes). With the
        retrieval queries (``retrieval=True``) also ``"legend_embedding": float[E]`` (the query that read
        the whole interleaved prompt, every phrase as text in evaluation) and ``"image_embedding":
        float[E]``, both L2-normalised: interleave retrieval ranks the images of a dataset against each
        legend (the pairs the InfoNCE term trains), as image-text retrieval ranks them against each
        caption; and, for an image with a visual entity drawn on its reference (evaluation),
        ``"visual_legend_embedding": float[E]``.
        """
        last = output.last
        strokes = self._strokes_of(output, batch)
        similarity = self.similarities(output, strokes, layers=[len(output.layers) - 1])[0]
        per_image = best_proposal_predictions(
            similarity, last[ENTITY_PROPOSALS]["mask_logits"], last[ENTITY_QUERIES]["valid"], batch
        )
        results: list[dict[str, Any]] = [
            {
                "masks": masks,
                "scores": scores,
                "phrases": phrases_of(target)[0],
                "visual": torch.tensor([s is not None for s in image_strokes], dtype=torch.bool),
            }
            for (masks, scores), target, image_strokes in zip(
                per_image, batch["targets"], strokes, strict=True
            )
        ]
        if IMAGE_QUERY in last and LEGEND_QUERIES in last:
            images = F.normalize(last[IMAGE_QUERY]["embeddings"][:, 0].float(), dim=-1)  # [B,E]
            legends = F.normalize(last[LEGEND_QUERIES]["embeddings"][:, 0].float(), dim=-1)  # [B,E]
            for b, result in enumerate(results):
                result["image_embedding"] = images[b]
                result["legend_embedding"] = legends[b]
        if VISUAL_LEGEND in output.extras:
            embeddings, has_visual = output.extras[VISUAL_LEGEND]
            visual_legends = F.normalize(embeddings.float(), dim=-1)
            for b, result in enumerate(results):
                if bool(has_visual[b]):
                    result["visual_legend_embedding"] = visual_legends[b]
        return results

    # -- evaluation and outputs ---------------------------------------------------------------------

    def build_metrics(self, dataset: EvaluatedDataset) -> TaskMetrics | None:
        """Grounding metrics of the text (and visual) phrases, interleave retrieval with ``retrieval``."""
        return interleave_metrics(retrieval=self.retrieval, visual=self.visual_prompt_p > 0)

    def update_metrics(
        self,
        metrics: TaskMetrics,
        batch: Batch,
        predictions: list[dict[str, Any]],
        context: TaskContext,
    ) -> None:
        """Each phrase's mask against its segment, text and visual apart; each legend against every image."""
        if "retrieval" in metrics and "legend_embedding" in predictions[0]:  # type: ignore[operator]
            images = torch.stack([p["image_embedding"] for p in predictions])
            ids = torch.tensor(batch["image_ids"], device=images.device)
            legends = torch.stack([p["legend_embedding"] for p in predictions])
            cast(RetrievalRecall, metrics["retrieval"]).update(images, ids, legends, ids)  # type: ignore[index]
            if "visual_retrieval" in metrics:  # type: ignore[operator]
                rows = [b for b, p in enumerate(predictions) if "visual_legend_embedding" in p]
                visual_legends = [predictions[b]["visual_legend_embedding"] for b in rows]
                visual_ids = ids[rows] if rows else ids[:0]
                stacked = torch.stack(visual_legends) if rows else legends[:0]
                visual_recall = cast(RetrievalRecall, metrics["visual_retrieval"])  # type: ignore[index]
                # every image is in the gallery, whether or not its own legend has a visual entity
                visual_recall.update(images, ids, stacked, visual_ids)
        indices = [torch.as_tensor(phrases_of(target)[1], dtype=torch.int64) for target in batch["targets"]]
        for member, want_visual in (("grounding", False), ("visual_grounding", True)):
            if member not in metrics:  # type: ignore[operator]
                continue
            keep = [p["visual"].cpu() == want_visual for p in predictions]
            chosen = [
                {**p, "masks": p["masks"][k.to(p["masks"].device)]}
                for p, k in zip(predictions, keep, strict=True)
            ]
            grounding = cast(GroundingMetrics, metrics[member])  # type: ignore[index]
            update_grounding_metrics(
                grounding, batch, chosen, [i[k] for i, k in zip(indices, keep, strict=True)]
            )

    def overlay_layers(
        self, prediction: Mapping[str, Any], class_names: Sequence[str]
    ) -> OverlayLayers | None:
        """Each phrase's mask, labelled with the phrase (a visual one marked as such)."""
        if "visual" not in prediction:
            return text_overlay(prediction, "phrases")
        labelled = {
            **prediction,
            "phrases": [
                f"{VISUAL_PLACEHOLDER} {text}" if bool(is_visual) else text
                for text, is_visual in zip(prediction["phrases"], prediction["visual"], strict=True)
            ],
        }
        return text_overlay(labelled, "phrases")
