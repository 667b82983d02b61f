"""Visual prompts into tokens read from the pixel decoder's own features (FIND's spatial pathway).

A visual prompt is a positive mask and an optional negative mask over the batch's padded frame
(boxes, clicks and scribbles become masks first: :func:`~findlit.interface.prompts.boxes_to_masks`,
:func:`~findlit.interface.prompts.points_to_masks`). An interactive round adds the clicks on missed
pixels to the positive mask and those on wrong pixels to the negative mask; an interleaved entity
is a positive mask alone.

From UX-Decoder/FIND ``modeling/interface/find.py`` (``forward``, "Get layerwise spatial query") and
``modeling/utils/interactive.py`` (``rand_sample``):

- points are drawn for every level the decoder cross-attends to, anew for each level, from the
  positive masks and from the negative masks separately: up to ``MAX_SPATIAL_LEN`` = 512 points per
  image and side (``configs/find/focalt_unicl_lang.yaml``), shared equally by the image's non-empty
  masks of that side;
- a point's token is the level's features (with their level embedding, FIND's ``src[i]``) sampled
  bilinearly at the point, times a per-level D x D matrix (``mask_sptial_embed``, truncated normal
  with std 0.02), plus a learned indicator (``pn_indicator``: row 0 on positive points, row 1 on
  negative ones);
- decoder layer i reads the tokens of level ``i % 3``: they are set anew before every layer, not
  carried over from the previous one (``attention_data.set('tokens_vision_spatial', ...)`` inside
  the layer loop).

findlit's own details: a point is a pixel centre; its positional encoding is the sine encoding of
the point in its image's own coordinates (as the pixel decoder's positions; FIND passes a detached
copy of the token instead); with a padding mask, strokes are cut to their image and a point reads
only its image's cells (its cell coordinate is clamped to the image's cells, as ``grid_sample``'s
border mode clamps to a frame), so an image's tokens do not depend on the frame it is padded into.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from findlit.encoders.base import STRIDES
from findlit.interface.pixel_decoder import LEVELS, PixelDecoderOutput, PositionEmbeddingSine
from findlit.interface.prompts import sample_mask_points

POSITIVE, NEGATIVE = 0, 1
"""Rows of the indicator embedding (FIND's ``pn_indicator``)."""


@dataclass
class VisualPrompts:
    """The visual prompts of one token type (e.g. ``tokens.vision.spatial``) for a batch.

    A prompt keeps its rank among its image's prompts whatever its masks, so that prompt j of an
    image stays prompt j (its per-prompt query, a legend prompt it stands for). With both masks empty
    it has no token; its per-prompt query (or the legend prompt it stands for) then reads no token
    either and skips cross-attention (the interface leaves rows with nothing to read out of it).

    Args:
        positive: bool[N,H,W], what each of the N prompts points at, over the batch's padded frame
            (the frame of its ``padding_mask``; H, W at input resolution).
        image: long[N], the image each prompt belongs to (any order; a batch's image may have none).
        negative: bool[N,H,W], what each prompt excludes (negative clicks); None = nothing.

    """

    positive: Tensor
    image: Tensor
    negative: Tensor | None = None

    @property
    def num_prompts(self) -> int:
        """N."""
        return int(self.positive.shape[0])

    def check(self, batch: int) -> None:
        """Raise ``ValueError`` unless the shapes agree and every owner is one of ``batch`` images."""
        if self.positive.dtype != torch.bool or self.positive.dim() != 3:
            raise ValueError(
                f"positive must be bool[N,H,W], got {self.positive.dtype}{list(self.positive.shape)}"
            )
        if self.negative is not None and (
            self.negative.dtype != torch.bool or self.negative.shape != self.positive.shape
        ):
            raise ValueError(
                f"negative must be bool{list(self.positive.shape)} like positive, "
                f"got {self.negative.dtype}{list(self.negative.shape)}"
            )
        if self.image.dim() != 1 or int(self.image.shape[0]) != self.num_prompts:
            raise ValueError(f"image must be long[{self.num_prompts}], got {list(self.image.shape)}")
        if self.num_prompts and not (int(self.image.min()) >= 0 and int(self.image.max()) < batch):
            raise ValueError(f"image ids must lie in 0..{batch - 1}, got {self.image.tolist()}")


@dataclass
class VisualTokens:
    """Tokens of N visual prompts, one set per decoder level (P points per prompt, at most).

    Args:
        tokens: one float[N,P,D] per level (:data:`~findlit.interface.pixel_decoder.LEVELS` order);
            zero where not valid.
        positions: one float[N,P,D] per level, sine encodings of the points; zero where not valid.
        valid: bool[N,P], the same on every level: positive points first, then negative ones.
        image: long[N], the owner image of each prompt.

    """

    tokens: list[Tensor]
    positions: list[Tensor]
    valid: Tensor
    image: Tensor


def points_per_mask(masks: Tensor, image: Tensor, batch: int, budget: int) -> Tensor:
    """Each mask's share of its image's point budget: ``budget // (non-empty masks of the image)``.

    Args:
        masks: bool[N,H,W].
        image: long[N], the owner image of each mask.
        batch: B.
        budget: points per image.

    Returns:
        long[N], at least 1 for a non-empty mask, 0 for an empty one.

    """
    nonempty = masks.flatten(1).any(dim=1)
    per_image = torch.bincount(image[nonempty], minlength=batch)
    share = (budget // per_image.clamp(min=1)).clamp(min=1)
    return torch.where(nonempty, share[image], torch.zeros_like(image))


def _image_extents(
    padding_mask: Tensor | None, batch: int, frame: tuple[int, int], device: torch.device
) -> Tensor:
    """float[B,4] as (left, top, width, height) of each image's own pixels in the frame.

    Without a padding mask every image is the whole frame. Images are rectangles of valid pixels.
    """
    if padding_mask is None:
        whole = torch.tensor([0.0, 0.0, float(frame[1]), float(frame[0])], device=device)
        return whole.expand(batch, 4)
    return _valid_box(~padding_mask)


def _valid_box(valid: Tensor) -> Tensor:
    """float[B,4] as (left, top, width, height) of the True cells of bool[B,h,w] (a rectangle each)."""
    rows, cols = valid.any(dim=2), valid.any(dim=1)  # [B,h], [B,w]
    top = rows.float().argmax(dim=1)  # first True
    left = cols.float().argmax(dim=1)
    height, width = rows.sum(dim=1).clamp(min=1), cols.sum(dim=1).clamp(min=1)
    return torch.stack([left, top, width, height], dim=1).float()


def _sample_cells(level: Tensor, cells: Tensor, image: Tensor) -> Tensor:
    """Bilinear features of a level at cell coordinates, each prompt from its own image only.

    The points of each image are packed into one ``grid_sample`` call over the batch (about
    ``B * max points per image`` samples): sampling every image at every prompt's points would cost
    B times more, and copying each prompt's map N times far more.

    Args:
        level: float[B,C,h,w].
        cells: float[N,P,2] as (u, v) in cell units (cell c spans u in [c, c + 1)).
        image: long[N].

    Returns:
        float[N,P,C].

    """
    batch, _, h, w = level.shape
    n, p, _ = cells.shape
    one_hot = F.one_hot(image, batch)  # [N,B]
    rank = (one_hot.cumsum(dim=0) - 1).gather(1, image[:, None]).squeeze(1)  # prompt's rank in its image
    width = int(one_hot.sum(dim=0).max()) * p if n else 0
    slot = rank[:, None] * p + torch.arange(p, device=cells.device)  # [N,P]
    scale = torch.tensor([w, h], device=cells.device, dtype=cells.dtype)
    normalised = (cells * 2 / scale - 1).to(level.dtype)
    grid = level.new_zeros(batch, width, 2).index_put((image[:, None].expand(n, p), slot), normalised)
    values = F.grid_sample(
        level, grid[:, :, None], mode="bilinear", padding_mode="border", align_corners=False
    )
    return values[..., 0].transpose(1, 2)[image[:, None], slot]  # [B,C,width,1] -> [N,P,C]


class VisualPromptEncoder(nn.Module):
    """FIND's spatial pathway: visual prompts -> tokens from the pixel decoder's levels.

    Args:
        dim: interface width D (the pixel decoder's level channels; even).
        max_points: points per image and side (positive, negative) on each level, shared equally by
            the image's prompts (FIND's ``MAX_SPATIAL_LEN``: 512).

    """

    def __init__(self, dim: int, max_points: int = 512):
        super().__init__()
        if dim % 2:
            raise ValueError(f"dim must be even (sine positions), got {dim}")
        if max_points < 1:
            raise ValueError(f"max_points must be at least 1, got {max_points}")
        self.max_points = max_points
        # FIND's mask_sptial_embed: a D x D matrix per level, truncated normal, std 0.02
        self.projections = nn.ParameterList(
            nn.Parameter(nn.init.trunc_normal_(torch.empty(dim, dim), std=0.02)) for _ in LEVELS
        )
        self.indicator = nn.Embedding(2, dim)  # FIND's pn_indicator, N(0, 1)
        self.position = PositionEmbeddingSine(dim // 2)

    def forward(
        self,
        pixel: PixelDecoderOutput,
        prompts: VisualPrompts,
        padding_mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> VisualTokens:
        """Draw points from the prompts' masks and read their tokens from every level.

        Args:
            pixel: the pixel decoder's output for the batch (its ``levels``, ``level_embeddings`` and
                ``padding`` are read).
            prompts: N visual prompts over the batch's frame.
            padding_mask: bool[B,H,W], the batch's padding mask (the prompts' frame); None = none.
            generator: for reproducible draws; None = torch's global generator.

        Returns:
            :class:`VisualTokens` with P = the largest positive share plus the largest negative share.

        """
        if len(pixel.levels) != len(LEVELS):
            raise ValueError(f"expected the {len(LEVELS)} levels {LEVELS}, got {len(pixel.levels)}")
        batch = int(pixel.levels[0].shape[0])
        prompts.check(batch)
        device = pixel.levels[0].device
        image = prompts.image.to(device=device, dtype=torch.long)
        frame = (int(prompts.positive.shape[-2]), int(prompts.positive.shape[-1]))
        sides = [(prompts.positive.to(device), POSITIVE)]
        if prompts.negative is not None:
            sides.append((prompts.negative.to(device), NEGATIVE))
        if padding_mask is not None:
            if tuple(padding_mask.shape) != (batch, *frame):
                raise ValueError(
                    f"padding_mask is {list(padding_mask.shape)}, the prompts' frame {list(frame)}"
                )
            own = ~padding_mask.to(device)[image]
            sides = [(masks & own, flag) for masks, flag in sides]
        counts = [points_per_mask(masks, image, batch, self.max_points) for masks, _ in sides]
        extents = _image_extents(padding_mask, batch, frame, device)[image]  # [N,4]
        size = torch.tensor([frame[1], frame[0]], device=device, dtype=torch.float32)

        tokens, positions, valid = [], [], None
        for index, projection in enumerate(self.projections):
            drawn = [
                sample_mask_points(masks, count, generator)
                for (masks, _), count in zip(sides, counts, strict=True)
            ]
            points = torch.cat([xy for xy, _ in drawn], dim=1) * size  # [N,P,2] in pixels
            valid = torch.cat([ok for _, ok in drawn], dim=1)  # the same draw sizes on every level
            flags = torch.cat(
                [
                    torch.full_like(ok, flag, dtype=torch.long)
                    for (_, flag), (_, ok) in zip(sides, drawn, strict=True)
                ],
                dim=1,
            )
            level = pixel.levels[index]
            cells = self._cells(points, index, pixel, image)
            sampled = _sample_cells(level, cells, image) + pixel.level_embeddings[index]
            token = sampled @ projection.to(sampled.dtype) + self.indicator(flags).to(sampled.dtype)
            own_xy = (points - extents[:, None, :2]) / extents[:, None, 2:]
            position = self.position.encode_points(own_xy).to(token.dtype)
            keep = valid.unsqueeze(-1)
            tokens.append(token * keep)
            positions.append(position * keep)
        assert valid is not None  # at least one level
        return VisualTokens(tokens=tokens, positions=positions, valid=valid, image=image)

    @staticmethod
    def _cells(points: Tensor, index: int, pixel: PixelDecoderOutput, image: Tensor) -> Tensor:
        """float[N,P,2] cell coordinates on level ``index`` of pixel points float[N,P,2].

        With padding, clamped to the centres of the owner image's outermost cells: bilinear weights
        then never reach a padded cell (its features mean nothing).
        """
        cells = points / STRIDES[LEVELS[index]]
        if pixel.padding is None:
            return cells
        box = _valid_box(~pixel.padding[index])[image]  # [N,4] in cells
        low = box[:, None, :2] + 0.5
        high = box[:, None, :2] + box[:, None, 2:] - 0.5
        return torch.maximum(torch.minimum(cells, high), low)
