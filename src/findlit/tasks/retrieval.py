"""Image-text retrieval: an image query against caption queries, trained with symmetric InfoNCE.

Each caption is a ``tokens.language.caption`` prompt of its image, read by one
``queries.language.caption`` query; the learned ``queries.vision.image`` query reads the image
features. Batches carry every caption of each image (shuffled in training). In training the
interface reads each image's first ``train_captions`` (FIND: 1, a random caption) and the loss
takes them all as the image's positives (:func:`~findlit.losses.symmetric_infonce` with k texts
per image): more captions cost little (text only) and give every image more positive and negative
texts per step. Evaluation reads every caption; its loss takes each image's captions as positives.
As in FIND, the loss is applied to the last prediction only (no deep supervision), weighted by
``LossWeights.retrieval`` (8).

With ``caption_embeddings="sentences"`` (APE's sentence-level prompts, applied to captions; not in
FIND) a caption's embedding is its frozen pooled text vector through the interface's
``sentence_projection`` (:meth:`~findlit.interface.find.FINDInterface.embed_sentences`, the map of
the class-name sentences too), outside the decoder; the decoder reads the image query only.
Measured on the demo data (750 segmentation + 150 retrieval steps of 48, test on 200 images):
IR@1 / TR@1 12.1 / 12.0 with caption queries, 46.2 / 70.5 with sentences, PQ 50.9 and 51.6.

Datasets: ``coco_captions`` and ``karpathy``. Metrics: IR@k / TR@k of the image query against every
caption query over the whole dataset. Test results: ranked galleries of every query
(:class:`~findlit.outputs.result_sinks.RetrievalSink`). No overlays (no masks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from findlit.data.collate import Batch
from findlit.interface.find import IMAGE_QUERY, InterfaceOutput, InterfacePrompts
from findlit.losses import LossWeights, symmetric_infonce
from findlit.metrics import RetrievalRecall, retrieval_metrics
from findlit.outputs.result_sinks import ResultsOptions, ResultsSink, RetrievalSink
from findlit.tasks.base import EvaluatedDataset, Task, TaskContext, TaskMetrics
from findlit.tasks.grounding import encode_per_image
from findlit.tasks.registry import register_task

CAPTION_TOKENS = "tokens.language.caption"
CAPTION_QUERIES = "queries.language.caption"
CAPTION_EMBEDDINGS: tuple[str, ...] = ("queries", "sentences")


@register_task
class RetrievalTask(Task):
    """FIND's retrieval task.

    Args:
        weights: loss weights; ``retrieval`` is used (FIND: 8).
        train_captions: captions per image in training (FIND: 1). An image with fewer repeats its
            own; every image then has the same number, as the gather across ranks needs.
        caption_embeddings: ``"queries"`` (FIND): a caption query reads the caption's tokens
            through the decoder. ``"sentences"``: the caption's pooled text vector by the
            interface's sentence projection, outside the decoder (see the module docstring).

    """

    name = "retrieval"
    formats = ("coco_captions", "karpathy")

    def __init__(
        self,
        weights: LossWeights = LossWeights(),  # noqa: B008
        train_captions: int = 1,
        caption_embeddings: str = "queries",
    ):
        super().__init__()
        if train_captions < 1:
            raise ValueError(f"train_captions must be >= 1, got {train_captions}")
        if caption_embeddings not in CAPTION_EMBEDDINGS:
            raise ValueError(
                f"caption_embeddings must be one of {CAPTION_EMBEDDINGS}, got {caption_embeddings!r}"
            )
        self.weights = weights
        self.train_captions = train_captions
        self.caption_embeddings = caption_embeddings

    def captions(self, batch: Batch) -> list[list[str]]:
        """Per image the captions read: all, or in training the first ``train_captions`` (repeated)."""
        captions = [list(target["captions"]) for target in batch["targets"]]
        if any(not image_captions for image_captions in captions):
            raise ValueError("every image of a retrieval batch needs at least one caption")
        if self.training:
            k = self.train_captions
            captions = [[texts[i % len(texts)] for i in range(k)] for texts in captions]
        return captions

    def caption_sentences(self, batch: Batch, context: TaskContext) -> tuple[Tensor, Tensor]:
        """``(float[B,k,E] caption embeddings, bool[B,k] valid)`` from the pooled sentence vectors."""
        captions = self.captions(batch)
        device = batch["padding_mask"].device
        flat = [text for texts in captions for text in texts]
        embedded = context.interface.embed_sentences(context.sentences(flat).to(device))
        counts = [len(texts) for texts in captions]
        per_image = pad_sequence(list(embedded.split(counts)), batch_first=True)  # zeros after each
        valid = torch.arange(per_image.shape[1], device=device) < torch.tensor(counts, device=device)[:, None]
        return per_image, valid

    def prompts(self, batch: Batch, context: TaskContext) -> InterfacePrompts:
        """Each image's captions as prompts of the image, one query each, and one image query.

        In training only each image's first ``train_captions`` (repeated when it has fewer). With
        ``caption_embeddings="sentences"`` only the image query: captions do not enter the decoder.
        """
        if self.caption_embeddings == "sentences":
            return InterfacePrompts(learned={IMAGE_QUERY: 1})
        captions = self.captions(batch)
        tokens = encode_per_image(captions, context, batch["padding_mask"].device)
        return InterfacePrompts(
            learned={IMAGE_QUERY: 1},
            tokens={CAPTION_TOKENS: tokens},
            per_prompt={CAPTION_QUERIES: CAPTION_TOKENS},
        )

    def caption_outputs(
        self, output: InterfaceOutput, batch: Batch, context: TaskContext
    ) -> tuple[Tensor, Tensor]:
        """``(float[B,k,E], bool[B,k])``: the caption queries' last embeddings, or the sentences'."""
        if self.caption_embeddings == "sentences":
            return self.caption_sentences(batch, context)
        captions = output.last[CAPTION_QUERIES]
        return captions["embeddings"], captions["valid"]

    def losses(
        self, output: InterfaceOutput, batch: Batch, context: TaskContext
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Symmetric InfoNCE of the image query against its caption queries, last prediction only."""
        image = output.last[IMAGE_QUERY]["embeddings"][:, 0]
        captions, valid = self.caption_outputs(output, batch, context)
        loss = symmetric_infonce(image, captions, output.logit_scale, valid=valid)
        return self.weights.retrieval * loss, {"retrieval": loss.detach()}

    def predict(self, output: InterfaceOutput, batch: Batch, context: TaskContext) -> list[dict[str, Any]]:
        """Per image ``{"image_embedding": float[E], "caption_embeddings": float[c,E]}``, L2-normalised."""
        images = F.normalize(output.last[IMAGE_QUERY]["embeddings"][:, 0].float(), dim=-1)
        embeddings, valid = self.caption_outputs(output, batch, context)
        captions = F.normalize(embeddings.float(), dim=-1)
        return [
            {"image_embedding": images[b], "caption_embeddings": captions[b][valid[b]]}
            for b in range(images.shape[0])
        ]

    # -- evaluation and outputs ---------------------------------------------------------------------

    def build_metrics(self, dataset: EvaluatedDataset) -> TaskMetrics | None:
        """IR@1/5/10 and TR@1/5/10 over the whole gallery (:func:`~findlit.metrics.retrieval_metrics`)."""
        return retrieval_metrics()

    def update_metrics(
        self,
        metrics: TaskMetrics,
        batch: Batch,
        predictions: list[dict[str, Any]],
        context: TaskContext,
    ) -> None:
        """Add the batch's image embeddings and caption embeddings to the gallery, by image id."""
        recall = cast(RetrievalRecall, metrics["retrieval"])  # type: ignore[index]
        images = torch.stack([p["image_embedding"] for p in predictions])
        captions = [p["caption_embeddings"] for p in predictions]
        ids = torch.tensor(batch["image_ids"], device=images.device)
        counts = torch.tensor([len(c) for c in captions], device=images.device)
        recall.update(images, ids, torch.cat(captions), ids.repeat_interleave(counts))

    def results_sink(
        self, folder: Path, dataset: Any, vocabulary: Any, options: ResultsOptions
    ) -> ResultsSink | None:
        """Ranked galleries (``options.retrieval_top_k`` long) and the captions behind their ids."""
        return RetrievalSink(folder, dataset, options.retrieval_top_k, overwrite=options.overwrite)
