"""Image-text retrieval: an image query against caption queries, trained with symmetric InfoNCE.

Each caption is a ``tokens.language.caption`` prompt of its image, read by one
``queries.language.caption`` query; the learned ``queries.vision.image`` query reads the image
features. Training batches carry one caption per image, evaluation batches all of them. The loss
pairs each image's query with the query of its FIRST caption; as in FIND, it is applied to the last
prediction only (no deep supervision), weighted by ``LossWeights.retrieval`` (8).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from findlit.data.collate import Batch
from findlit.interface.find import InterfaceOutput, InterfacePrompts
from findlit.losses import LossWeights, symmetric_infonce
from findlit.tasks.base import Task, TaskContext
from findlit.tasks.grounding import encode_per_image

CAPTION_TOKENS = "tokens.language.caption"
CAPTION_QUERIES = "queries.language.caption"
IMAGE_QUERIES = "queries.vision.image"


class RetrievalTask(Task):
    """FIND's retrieval task.

    Args:
        weights: loss weights; ``retrieval`` is used (FIND: 8).

    """

    name = "retrieval"

    def __init__(self, weights: LossWeights = LossWeights()):  # noqa: B008 (a frozen dataclass)
        super().__init__()
        self.weights = weights

    def prompts(self, batch: Batch, context: TaskContext) -> InterfacePrompts:
        """Every caption a caption prompt of its image, one query per caption, one image query."""
        captions = [list(target["captions"]) for target in batch["targets"]]
        if any(not image_captions for image_captions in captions):
            raise ValueError("every image of a retrieval batch needs at least one caption")
        tokens = encode_per_image(captions, context, batch["padding_mask"].device)
        return InterfacePrompts(
            learned={IMAGE_QUERIES: 1},
            tokens={CAPTION_TOKENS: tokens},
            per_prompt={CAPTION_QUERIES: CAPTION_TOKENS},
        )

    def losses(
        self, output: InterfaceOutput, batch: Batch, context: TaskContext
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Symmetric InfoNCE of the image query and the first caption's query, last prediction only."""
        last = output.last
        image = last[IMAGE_QUERIES]["embeddings"][:, 0]
        caption = last[CAPTION_QUERIES]["embeddings"][:, 0]
        loss = symmetric_infonce(image, caption, output.logit_scale)
        return self.weights.retrieval * loss, {"retrieval": loss.detach()}

    def predict(self, output: InterfaceOutput, batch: Batch, context: TaskContext) -> list[dict[str, Any]]:
        """Per image ``{"image_embedding": float[E], "caption_embeddings": float[c,E]}``, L2-normalised."""
        last = output.last
        images = F.normalize(last[IMAGE_QUERIES]["embeddings"][:, 0].float(), dim=-1)
        captions = F.normalize(last[CAPTION_QUERIES]["embeddings"].float(), dim=-1)
        valid = last[CAPTION_QUERIES]["valid"]
        return [
            {"image_embedding": images[b], "caption_embeddings": captions[b][valid[b]]}
            for b in range(images.shape[0])
        ]
