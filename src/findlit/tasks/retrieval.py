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
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from findlit.data.collate import Batch
from findlit.interface.find import IMAGE_QUERY, InterfaceOutput, InterfacePrompts
from findlit.losses import LossWeights, symmetric_infonce
from findlit.tasks.base import Task, TaskContext
from findlit.tasks.grounding import encode_per_image

CAPTION_TOKENS = "tokens.language.caption"
CAPTION_QUERIES = "queries.language.caption"


class RetrievalTask(Task):
    """FIND's retrieval task.

    Args:
        weights: loss weights; ``retrieval`` is used (FIND: 8).
        train_captions: captions per image in training (FIND: 1). An image with fewer repeats its
            own; every image then has the same number, as the gather across ranks needs.

    """

    name = "retrieval"

    def __init__(self, weights: LossWeights = LossWeights(), train_captions: int = 1):  # noqa: B008
        super().__init__()
        if train_captions < 1:
            raise ValueError(f"train_captions must be >= 1, got {train_captions}")
        self.weights = weights
        self.train_captions = train_captions

    def prompts(self, batch: Batch, context: TaskContext) -> InterfacePrompts:
        """Each image's captions as prompts of the image, one query each, and one image query.

        In training only each image's first ``train_captions`` (repeated when it has fewer).
        """
        captions = [list(target["captions"]) for target in batch["targets"]]
        if any(not image_captions for image_captions in captions):
            raise ValueError("every image of a retrieval batch needs at least one caption")
        if self.training:
            k = self.train_captions
            captions = [[texts[i % len(texts)] for i in range(k)] for texts in captions]
        tokens = encode_per_image(captions, context, batch["padding_mask"].device)
        return InterfacePrompts(
            learned={IMAGE_QUERY: 1},
            tokens={CAPTION_TOKENS: tokens},
            per_prompt={CAPTION_QUERIES: CAPTION_TOKENS},
        )

    def losses(
        self, output: InterfaceOutput, batch: Batch, context: TaskContext
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Symmetric InfoNCE of the image query against its caption queries, last prediction only."""
        last = output.last
        image = last[IMAGE_QUERY]["embeddings"][:, 0]
        captions = last[CAPTION_QUERIES]
        loss = symmetric_infonce(image, captions["embeddings"], output.logit_scale, valid=captions["valid"])
        return self.weights.retrieval * loss, {"retrieval": loss.detach()}

    def predict(self, output: InterfaceOutput, batch: Batch, context: TaskContext) -> list[dict[str, Any]]:
        """Per image ``{"image_embedding": float[E], "caption_embeddings": float[c,E]}``, L2-normalised."""
        last = output.last
        images = F.normalize(last[IMAGE_QUERY]["embeddings"][:, 0].float(), dim=-1)
        captions = F.normalize(last[CAPTION_QUERIES]["embeddings"].float(), dim=-1)
        valid = last[CAPTION_QUERIES]["valid"]
        return [
            {"image_embedding": images[b], "caption_embeddings": captions[b][valid[b]]}
            for b in range(images.shape[0])
        ]
