"""Image-text retrieval recall over the whole gallery, computed in chunks.

``RetrievalRecall`` accumulates image and caption embeddings over an evaluation epoch (list states that
torchmetrics concatenates across ranks) and ranks every query against the complete gallery at
``compute()``. Similarities are cosine similarities (dot products after L2 normalisation) and are
computed ``chunk_size`` query rows at a time, so the peak extra memory is ``chunk_size x gallery`` rather
than the full ``captions x images`` matrix.

Recall definitions (as in X-Decoder / FIND, COCO Karpathy style with several captions per image):

- ``IR@k`` (text -> image): for each caption, is its image among the ``k`` most similar images.
- ``TR@k`` (image -> text): for each image, is any of its captions among the ``k`` most similar captions.

The rank of a positive is the number of gallery items *strictly* more similar than it, so ties are
resolved in favour of the positive. Images without any caption are part of the image gallery (for
``IR``) but are not ``TR`` queries.

Distributed evaluation: samplers pad the last batch by repeating samples, so after gathering the same
image can appear on several ranks. Images are deduplicated by id (first occurrence kept) and captions
that are exact duplicates (same image id and identical embedding) are deduplicated too, so nothing is
counted twice.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

DEFAULT_TOP_K: tuple[int, ...] = (1, 5, 10)


class RetrievalRecall(Metric):
    """Image-to-text and text-to-image recall@k over the whole gallery.

    Args:
        top_k: the ``k`` values to report.
        chunk_size: number of query rows whose similarities are computed at once.
        key_prefix: put before every key (e.g. ``"visual_"`` for interleaved prompts with visual
            entities, beside the text-only prompts' unprefixed keys).
        **kwargs: forwarded to :class:`torchmetrics.Metric`.

    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    image_embeddings: list[Tensor]
    image_ids: list[Tensor]
    text_embeddings: list[Tensor]
    text_image_ids: list[Tensor]

    def __init__(
        self,
        top_k: Sequence[int] = DEFAULT_TOP_K,
        chunk_size: int = 1024,
        key_prefix: str = "",
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        self.key_prefix = key_prefix
        if not top_k or any(k < 1 for k in top_k):
            raise ValueError(f"top_k must be non-empty positive integers, got {tuple(top_k)}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self.top_k = tuple(int(k) for k in top_k)
        self.chunk_size = int(chunk_size)
        self.add_state("image_embeddings", default=[], dist_reduce_fx="cat")
        self.add_state("image_ids", default=[], dist_reduce_fx="cat")
        self.add_state("text_embeddings", default=[], dist_reduce_fx="cat")
        self.add_state("text_image_ids", default=[], dist_reduce_fx="cat")

    def update(
        self,
        image_embeddings: Tensor,
        image_ids: Tensor,
        text_embeddings: Tensor,
        text_image_ids: Tensor,
    ) -> None:
        """Accumulate images ``[B, E]`` with ids ``[B]`` and captions ``[T, E]`` with image ids ``[T]``."""
        if image_embeddings.ndim != 2 or text_embeddings.ndim != 2:
            raise ValueError("embeddings must be 2-D [rows, dim]")
        if image_embeddings.shape[1] != text_embeddings.shape[1]:
            raise ValueError(
                f"embedding dims differ: images {image_embeddings.shape[1]}, texts {text_embeddings.shape[1]}"
            )
        if image_ids.shape != (image_embeddings.shape[0],) or text_image_ids.shape != (
            text_embeddings.shape[0],
        ):
            raise ValueError("ids must be 1-D with one entry per embedding row")
        self.image_embeddings.append(image_embeddings.detach().float())
        self.image_ids.append(image_ids.detach().long())
        self.text_embeddings.append(text_embeddings.detach().float())
        self.text_image_ids.append(text_image_ids.detach().long())

    def _zeros(self) -> dict[str, Tensor]:
        zero = torch.zeros((), device=self.device)
        return {f"{self.key_prefix}{d}R@{k}": zero.clone() for d in ("I", "T") for k in self.top_k}

    def compute(self) -> dict[str, Tensor]:
        """Return ``{"IR@k": ..., "TR@k": ...}`` as fractions in ``[0, 1]``."""
        # while synced across ranks (inside compute) each state is one gathered tensor, not a list
        if _is_empty(self.image_embeddings) or _is_empty(self.text_embeddings):
            return self._zeros()
        images = dim_zero_cat(self.image_embeddings)
        image_ids = dim_zero_cat(self.image_ids)
        texts = dim_zero_cat(self.text_embeddings)
        text_image_ids = dim_zero_cat(self.text_image_ids)
        images, image_ids = _dedupe_images(images, image_ids)
        texts, text_image_ids = _dedupe_texts(texts, text_image_ids)
        if images.shape[0] == 0 or texts.shape[0] == 0:
            return self._zeros()

        images = torch.nn.functional.normalize(images, dim=-1)
        texts = torch.nn.functional.normalize(texts, dim=-1)
        # position of each caption's image in the deduplicated gallery
        sorted_ids, order = image_ids.sort()
        pos = torch.searchsorted(sorted_ids, text_image_ids).clamp(max=sorted_ids.numel() - 1)
        if not bool((sorted_ids[pos] == text_image_ids).all()):
            raise ValueError("some captions refer to image ids that are not in the image gallery")
        text_target = order[pos]

        ir_rank = self._text_to_image_ranks(texts, images, text_target)
        tr_rank = self._image_to_text_ranks(images, texts, text_target)
        out: dict[str, Tensor] = {}
        for k in self.top_k:
            out[f"{self.key_prefix}IR@{k}"] = (ir_rank < k).float().mean()
        for k in self.top_k:
            out[f"{self.key_prefix}TR@{k}"] = (
                (tr_rank < k).float().mean() if tr_rank.numel() else torch.zeros((), device=self.device)
            )
        return out

    def _text_to_image_ranks(self, texts: Tensor, images: Tensor, text_target: Tensor) -> Tensor:
        """Rank of each caption's image among all images (0 = most similar)."""
        ranks = []
        for start in range(0, texts.shape[0], self.chunk_size):
            sims = texts[start : start + self.chunk_size] @ images.T  # [c, N]
            positive = sims.gather(1, text_target[start : start + self.chunk_size, None])
            ranks.append((sims > positive).sum(dim=1))
        return torch.cat(ranks)

    def _image_to_text_ranks(self, images: Tensor, texts: Tensor, text_target: Tensor) -> Tensor:
        """Rank of the best caption of each image (that has captions) among all captions."""
        ranks = []
        for start in range(0, images.shape[0], self.chunk_size):
            stop = min(start + self.chunk_size, images.shape[0])
            sims = images[start:stop] @ texts.T  # [c, T]
            rows = torch.arange(start, stop, device=sims.device)
            is_positive = text_target[None, :] == rows[:, None]
            best = sims.masked_fill(~is_positive, float("-inf")).max(dim=1).values
            has_caption = is_positive.any(dim=1)
            rank = (sims > best[:, None]).sum(dim=1)
            ranks.append(rank[has_caption])
        return torch.cat(ranks)


def _is_empty(state: list[Tensor] | Tensor) -> bool:
    """Whether a state holds no rows: no batch yet, or an empty gathered tensor."""
    return state.numel() == 0 if isinstance(state, Tensor) else not state


def _dedupe_images(embeddings: Tensor, ids: Tensor) -> tuple[Tensor, Tensor]:
    """Keep the first row of every image id."""
    unique, inverse = torch.unique(ids, return_inverse=True)
    if unique.numel() == ids.numel():
        return embeddings, ids
    rows = torch.arange(ids.numel(), device=ids.device)
    first = torch.full_like(unique, ids.numel()).scatter_reduce(0, inverse, rows, reduce="amin")
    first = first.sort().values
    return embeddings[first], ids[first]


def _dedupe_texts(embeddings: Tensor, image_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Drop captions that repeat an earlier caption exactly (same image id and identical embedding)."""
    if torch.unique(image_ids).numel() == image_ids.numel():
        return embeddings, image_ids
    # compare the float bits exactly; ids stay integers so large ids are not rounded
    keyed = torch.cat([image_ids[:, None], embeddings.contiguous().view(torch.int32).long()], dim=1)
    _, inverse = torch.unique(keyed, dim=0, return_inverse=True)
    rows = torch.arange(image_ids.numel(), device=image_ids.device)
    first = torch.full(
        (int(inverse.max()) + 1,), image_ids.numel(), device=image_ids.device, dtype=torch.long
    )
    first = first.scatter_reduce(0, inverse, rows, reduce="amin").sort().values
    return embeddings[first], image_ids[first]
