"""The FIND interface: a trainable transformer decoder over frozen image features and prompt tokens.

A pixel decoder turns the frozen ``res2..res5`` pyramid into mask features (stride 4) and three
levels (strides 32, 16, 8). The embeddings of a batch (learnable proposals and queries, projected
prompt tokens) are laid out as one sequence by the attention :class:`Prototype`, then L layers of

    masked cross-attention (one level per layer, round robin; proposals read only inside the previous
    layer's predicted masks, as Mask2Former; other readers of the features are unmasked) ->
    prototyped self-attention (one fused SDPA call over the whole sequence) -> FFN

update it. After a shared decoder ``LayerNorm``, proposals give mask logits and semantic embeddings,
queries give semantic embeddings; this happens before the first layer and after every layer (deep
supervision), so there are ``num_layers + 1`` predictions.

Padding: images of a batch are zero-padded to a common frame. Given the batch's padding mask, the
interface leaves padded cells out of everything an image's outputs read (the pixel decoder's norms,
convolution borders, encoder attention and positions, see :mod:`~findlit.interface.pixel_decoder`;
the decoder's cross-attention keys; mask and image pooling), so an image's outputs on its own region
do not depend on the other images of its batch, as long as its frozen features do not either.

Visual prompts (the hook of FIND's spatial pathway): ``InterfacePrompts.visual`` maps token types
(``tokens.vision.spatial``, ``tokens.vision.spatial_``) to masks over the batch's frame. After the
pixel decoder and before the first layer, the interface's :class:`VisualPromptEncoder` turns them into
tokens read from the pixel decoder's levels (one set per level); they are laid out like any other
token type, and before layer i their rows are set to level ``i % 3``'s tokens, the level that layer's
cross-attention reads (see :mod:`~findlit.interface.visual_prompts`). A batch without visual prompts
runs exactly the code (and gives exactly the outputs) of an interface without the hook.

Learnable embeddings (FIND's duplication): only *root* types (those without ``init_from`` in the
prototype, e.g. ``proposals.vision.object`` and ``queries.vision.image``) own parameters. A type with
``init_from`` (grounding / segment / entity proposals, every other query type) uses its source's
parameters, expanded, so the copies share them and their gradients add up on the source. A root
proposal type owns ``num_proposals`` feature and positional embeddings (a batch uses the first n);
any other root type owns one, expanded to however many embeddings of that type a batch needs (the
queries differ through the prompts they read, not through their initial value).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from findlit.interface.heads import (
    LogitScale,
    MaskHead,
    MaskPooledEmbedding,
    NoObjectEmbedding,
    SemanticProjection,
    attention_mask_from_logits,
    class_logits,
)
from findlit.interface.layers import DecoderLayer
from findlit.interface.pixel_decoder import PixelDecoder, PixelDecoderOutput
from findlit.interface.prompts import LanguageProjection
from findlit.interface.prototype import CompiledPrototype, Prototype, default_prototype, kind_of
from findlit.interface.visual_prompts import VisualPromptEncoder, VisualPrompts, VisualTokens

IMAGE_QUERY = "queries.vision.image"

LayerOutput = dict[str, dict[str, Tensor]]
"""One prediction: ``{output type: {"embeddings": float[B,n,E], "valid": bool[B,n], "mask_embeddings":
float[B,n,D]}}``; proposal types also carry ``"mask_logits": float[B,n,H/4,W/4]`` (their mask
embeddings against the mask features)."""


@dataclass
class PromptTokens:
    """The prompts of one token type (e.g. ``tokens.language.class``) for a batch.

    Args:
        tokens: float[N,L,C], N prompts of at most L tokens: C = ``text_dim`` (raw text-encoder
            output, projected by the interface's :class:`LanguageProjection`) or, with
            ``projected=True``, C = ``hidden_dim`` (e.g. visual-prompt tokens).
        mask: bool[N,L], True on real tokens; padding is dropped.
        image: long[N], the image each prompt belongs to (captions, sentences); None = every
            prompt is shared by every image of the batch (class names).
        projected: whether ``tokens`` are already at the interface width.
        sentence: optional float[N,C], one pooled vector per prompt (APE's sentence-level prompt
            embedding), in the same space as ``tokens``. A per-prompt query of this token type then
            starts from its learned content plus its prompt's projected sentence vector, so queries
            of different prompts differ from the first layer on (otherwise they all start equal and
            tell their prompts apart only through cross-attention, which single-word class names
            such as "circle" and "square" barely separate).
        positions: optional float[N,L,D] (``projected`` tokens only), the tokens' positional
            encodings (visual prompts: where each point is); None = zero.
        stands_for_visual: optional bool[N], prompts that stand for a visual reference (FIND's
            "[INTERACTIVE]" entities of an interleaved prompt): the interface adds to each of their
            tokens the learned content of ``queries.vision.image``, as FIND adds the image query's
            initial feature to the legend tokens of visual entities (``interleave_visual_otokens``
            in UX-Decoder/FIND ``modeling/interface/find.py``). What the reference shows reaches
            them through cross-attention to the visual tokens of their prompt (the prototype's
            ``tokens.interleave.legend`` reads ``tokens.vision.spatial_``). None = no such prompt.

    """

    tokens: Tensor
    mask: Tensor
    image: Tensor | None = None
    projected: bool = False
    sentence: Tensor | None = None
    positions: Tensor | None = None
    stands_for_visual: Tensor | None = None

    @property
    def num_prompts(self) -> int:
        """N."""
        return int(self.mask.shape[0])


@dataclass
class InterfacePrompts:
    """What to instantiate in a batch: any subset of the prototype's types.

    Args:
        learned: ``{proposal, query or memory type: count}`` of embeddings started from the learnable
            parameters, an int (every image) or long[B] (per image, padded); e.g.
            ``{"proposals.vision.object": 100, "queries.vision.image": 1}``. Proposal counts are at
            most ``num_proposals``.
        tokens: ``{token type: PromptTokens}``; inside an image, the token rows of a type are the real
            tokens of its prompts, concatenated in prompt order.
        per_prompt: ``{query type: token type}``: one query per prompt of that token type (per image,
            or all shared prompts), which reads only its own prompt's tokens in cross-attention; e.g.
            ``{"queries.language.class": "tokens.language.class"}``. Query j of an image is its
            j-th prompt. The token type may be a visual one (``visual``).
        visual: ``{token type: VisualPrompts}``, visual prompts (masks over the batch's frame) that
            the interface turns into that type's tokens from its pixel decoder's features
            (:meth:`FINDInterface.encode_visual_prompts`); e.g. ``{"tokens.vision.spatial": ...}`` with
            ``per_prompt={"queries.vision.spatial": "tokens.vision.spatial"}``. Needs an interface
            built with ``visual_prompts=True``.
        visual_tokens: ``{token type: VisualTokens}``, visual prompts already encoded, e.g. by
            :meth:`FINDInterface.encode_visual_prompts` on the pixel features of *other* images
            (FIND's interleave retrieval reads a visual entity from its reference in another
            image, ``refint_tokens`` in ``modeling/interface/find.py``); their ``image`` names the
            batch's image that owns each prompt. Laid out as ``visual``.
        memory_masks: ``{memory type: float[B,h,w]}``, mask logits of each image's previous
            interaction round (any resolution of the batch's frame, e.g. the stride-4 mask logits): the
            type's rows read the image features only where ``sigmoid >= 0.5`` at each layer's level
            (resized bilinearly), and everywhere when that is nowhere. FIND masks
            ``memories.vision.spatial`` this way (``cross_attn_mask`` in its
            ``attention_data_struct_ging.py``). A memory type without a mask reads all features.
        generator: draws the visual prompts' points and, in training, the prototype's conditional
            swaps; None = torch's global generator.

    """

    learned: dict[str, int | Tensor] = field(default_factory=dict)
    tokens: dict[str, PromptTokens] = field(default_factory=dict)
    per_prompt: dict[str, str] = field(default_factory=dict)
    visual: dict[str, VisualPrompts] = field(default_factory=dict)
    visual_tokens: dict[str, VisualTokens] = field(default_factory=dict)
    memory_masks: dict[str, Tensor] = field(default_factory=dict)
    generator: torch.Generator | None = None


@dataclass
class InterfaceOutput:
    """What the interface returns.

    Args:
        layers: ``num_layers + 1`` predictions (before the first layer, then after each layer; the
            last is the final one), each a :data:`LayerOutput`.
        logit_scale: float scalar, the learned temperature of cosine logits.
        compiled: the batch's compiled prototype (layout and masks).
        extras: what a task's run adds beside the interface's predictions (e.g. the interactive
            task's IoU per click in evaluation); empty from the interface itself.

    """

    layers: list[LayerOutput]
    logit_scale: Tensor
    compiled: CompiledPrototype
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def last(self) -> LayerOutput:
        """The final prediction."""
        return self.layers[-1]

    def class_logits(
        self,
        proposal_type: str,
        class_embeddings: Tensor,
        layer: int = -1,
        no_object: Tensor | None = None,
    ) -> Tensor:
        """Open-vocabulary class logits of a proposal type at one layer.

        Args:
            proposal_type: e.g. ``"proposals.vision.object"``.
            class_embeddings: float[K,E] or float[B,K,E], e.g. the same layer's
                ``layers[layer]["queries.language.class"]["embeddings"]``.
            layer: which prediction.
            no_object: optional float[E] appended as class K.

        Returns:
            float[B,Q,K] (or K+1 with ``no_object``), see :func:`~findlit.interface.heads.class_logits`.

        """
        embeddings = self.layers[layer][proposal_type]["embeddings"]
        return class_logits(embeddings, class_embeddings, self.logit_scale, no_object)


def _parameter_key(type_name: str) -> str:
    return type_name.replace(".", "__")


def _add_to_rows(embeddings: Tensor, rows: slice, term: Tensor) -> Tensor:
    """``embeddings`` float[B,S,E] with ``term`` float[B,n,E] added to ``rows`` (n rows), out of place."""
    return torch.cat(
        [embeddings[:, : rows.start], embeddings[:, rows] + term, embeddings[:, rows.stop :]], dim=1
    )


def _replace_rows(sequence: Tensor, rows: slice, block: Tensor) -> Tensor:
    """``sequence`` float[B,S,D] with ``rows`` (n rows) replaced by ``block`` float[B,n,D], out of place."""
    return torch.cat([sequence[:, : rows.start], block.to(sequence.dtype), sequence[:, rows.stop :]], dim=1)


def _level_prompt(visual: VisualTokens, level: int) -> PromptTokens:
    """One level's visual tokens as (projected) prompt tokens; the layout is the same on every level."""
    return PromptTokens(
        visual.tokens[level], visual.valid, visual.image, projected=True, positions=visual.positions[level]
    )


def _image_weights(mask_features: Tensor, padding: Tensor | None) -> Tensor:
    """float[B,1,h,w] on the mask features' grid: 1 on each image's own cells, 0 on padding.

    Args:
        mask_features: float[B,C,h,w].
        padding: bool[B,h,w], True on padded cells; None = no padding (all ones).

    """
    if padding is None:
        return mask_features.new_ones(mask_features.shape[0], 1, *mask_features.shape[-2:])
    return (~padding).unsqueeze(1).to(mask_features.dtype)


def _check_padding_mask(padding_mask: Tensor, features: Mapping[str, Tensor]) -> None:
    """Raise if ``padding_mask`` is not bool[B,H,W] for the B images of ``features``."""
    batch = int(next(iter(features.values())).shape[0]) if features else None
    if padding_mask.dtype != torch.bool or padding_mask.dim() != 3:
        raise ValueError(
            f"padding_mask must be bool[B,H,W], got {padding_mask.dtype}{list(padding_mask.shape)}"
        )
    if batch is not None and int(padding_mask.shape[0]) != batch:
        raise ValueError(f"padding_mask has {padding_mask.shape[0]} images, the features {batch}")


def _effective_padding(padding_mask: Tensor | None, features: Mapping[str, Tensor]) -> Tensor | None:
    """``padding_mask`` checked; None when it pads nothing (the unmasked path, exactly and at its cost)."""
    if padding_mask is None:
        return None
    _check_padding_mask(padding_mask, features)
    return padding_mask if bool(padding_mask.any()) else None


def _rank_within(owner: Tensor, batch: int) -> tuple[Tensor, Tensor]:
    """For items owned by images: each item's rank among its image's items (in order), and counts.

    Args:
        owner: long[R], the image of each item.
        batch: B.

    Returns:
        ``(rank long[R], counts long[B])``.

    """
    counts = torch.bincount(owner, minlength=batch)
    starts = counts.cumsum(0) - counts
    order = torch.argsort(owner, stable=True)
    rank = torch.empty_like(owner)
    rank[order] = torch.arange(owner.numel(), device=owner.device) - starts[owner[order]]
    return rank, counts


class FINDInterface(nn.Module):
    """FIND's interface: pixel decoder, prototyped decoder layers, heads.

    Args:
        in_channels: channels of the frozen pyramid, ``{"res2": C2, ..., "res5": C5}``.
        text_dim: width of the frozen text encoder's token embeddings.
        hidden_dim: interface width D (also the mask-feature channels).
        num_layers: decoder layers L.
        num_heads: attention heads.
        ffn_dim: hidden width of the decoder FFNs.
        num_proposals: learnable embeddings of each root proposal type (100 object proposals).
        embed_dim: width E of the joint semantic space.
        prototype: the attention prototype; None = FIND's default (:func:`default_prototype`).
        mask_pooling: add to every proposal's semantic embedding its mask features pooled under its
            own predicted mask (:class:`~findlit.interface.heads.MaskPooledEmbedding`; not in FIND,
            which is the default ``False``).
        image_pooling: add to the ``queries.vision.image`` embedding the mean of the mask features
            over the image, through its own pooling MLP (mask pooling with the whole image as the
            mask; not in FIND). The image query then sees every region of the image, not only what
            its attention picks out. The mean is over the image's own cells: with a padding mask,
            padded cells are left out; without one, the whole frame is the image.
        visual_prompts: build the visual-prompt encoder (FIND's spatial pathway), so that
            ``InterfacePrompts.visual`` can be given. Off, the interface has no such parameters (its
            checkpoints and initial weights are those of an interface from before the hook).
        max_visual_points: points per image, level and side (positive, negative) of the visual
            prompts, shared by the image's prompts (FIND's ``MAX_SPATIAL_LEN``: 512).

    """

    def __init__(
        self,
        in_channels: dict[str, int],
        text_dim: int,
        hidden_dim: int = 256,
        num_layers: int = 9,
        num_heads: int = 8,
        ffn_dim: int = 2048,
        num_proposals: int = 100,
        embed_dim: int = 512,
        prototype: Prototype | None = None,
        mask_pooling: bool = False,
        image_pooling: bool = False,
        visual_prompts: bool = False,
        max_visual_points: int = 512,
    ):
        super().__init__()
        self.prototype = default_prototype() if prototype is None else prototype
        for name, rule in self.prototype.types.items():
            if rule.cross_masked and kind_of(name) != "proposals":
                raise ValueError(
                    f"{name}: cross_masked needs predicted masks, which only proposal types have"
                )
        self.hidden_dim = hidden_dim
        self.num_proposals = num_proposals
        self.pixel_decoder = PixelDecoder(in_channels, hidden_dim, hidden_dim, heads=num_heads)
        self.language_projection = LanguageProjection(text_dim, hidden_dim)
        # pooled sentences straight to the joint space, by their own map: sharing the token path's
        # projections lets the class-name embeddings drag every caption query towards them
        self.sentence_projection = LanguageProjection(text_dim, embed_dim)
        roots = {
            _parameter_key(name): num_proposals if kind_of(name) == "proposals" else 1
            for name, rule in self.prototype.types.items()
            if rule.init_from is None and kind_of(name) != "tokens"
        }
        # feature and positional embeddings of root types, N(0, 1) as Mask2Former's nn.Embedding
        self.embeddings = nn.ParameterDict(
            {key: nn.Parameter(torch.randn(n, hidden_dim)) for key, n in roots.items()}
        )
        self.positions = nn.ParameterDict(
            {key: nn.Parameter(torch.randn(n, hidden_dim)) for key, n in roots.items()}
        )
        self.layers = nn.ModuleList(DecoderLayer(hidden_dim, num_heads, ffn_dim) for _ in range(num_layers))
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.mask_head = MaskHead(hidden_dim, hidden_dim)
        self.semantic = SemanticProjection(hidden_dim, embed_dim)
        self.logit_scale = LogitScale()
        # The "no object" class of open-vocabulary classification: a learned class embedding
        # (pass ``no_object=self.no_object()`` to ``InterfaceOutput.class_logits``).
        self.no_object = NoObjectEmbedding(embed_dim)
        self.mask_pooling = MaskPooledEmbedding(hidden_dim, embed_dim) if mask_pooling else None
        self.image_pooling = MaskPooledEmbedding(hidden_dim, embed_dim) if image_pooling else None
        # built last, so that the parameters above draw the same initial values with or without it
        self.visual_prompt_encoder = (
            VisualPromptEncoder(hidden_dim, max_visual_points) if visual_prompts else None
        )

    def embed_sentences(self, sentences: Tensor) -> Tensor:
        """Pooled text vectors float[K,text_dim] -> the joint space float[K,E], outside the decoder.

        APE's sentence-level class embeddings (``SegmentationTask(class_embeddings="sentences")``),
        by their own linear map and LayerNorm (``sentence_projection``), not the token path's
        language and semantic projections.
        """
        return self.sentence_projection.project(sentences)

    def encode_visual_prompts(
        self,
        pixel: PixelDecoderOutput,
        visual: Mapping[str, VisualPrompts],
        padding_mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, VisualTokens]:
        """The visual-prompt hook: visual prompts -> tokens read from this batch's pixel decoder output.

        :meth:`forward` calls it after the pixel decoder and before the decoder layers; a caller may
        call it on ``self.pixel_decoder(features, padding_mask)`` to look at the tokens.

        Args:
            pixel: the pixel decoder's output for the batch.
            visual: ``{token type: VisualPrompts}`` (masks over the batch's frame).
            padding_mask: bool[B,H,W], the batch's padding mask (with padding), or None.
            generator: draws the points; None = torch's global generator.

        Returns:
            ``{token type: VisualTokens}``, one token set per level (P points per prompt).

        """
        if self.visual_prompt_encoder is None:
            raise ValueError("visual prompts given, but the interface was built with visual_prompts=False")
        tokens = {}
        for name, prompts in visual.items():
            self._check_visual_type(name, "prompts.visual")
            tokens[name] = self.visual_prompt_encoder(pixel, prompts, padding_mask, generator)
        return tokens

    def _check_visual_type(self, name: str, field: str) -> None:
        """Raise unless ``name`` (a key of ``field``) is a token type of the prototype."""
        if kind_of(name) != "tokens" or name not in self.prototype.types:
            raise ValueError(f"{field} names {name!r}, which is not a token type of the prototype")

    def _learned(self, name: str, count: int) -> tuple[Tensor, Tensor]:
        """Initial content and positions float[count,D] of a learned type (its root's, shared)."""
        root = self.prototype.types[name].init_from or name
        key = _parameter_key(root)
        if key not in self.embeddings:
            raise ValueError(f"{name!r} is not a learnable type (proposals, queries or memories)")
        content: Tensor = self.embeddings[key]
        position: Tensor = self.positions[key]
        if content.shape[0] == 1:
            return content.expand(count, -1), position.expand(count, -1)
        if count > content.shape[0]:
            raise ValueError(f"{name!r}: {count} embeddings requested, only {content.shape[0]} learned")
        return content[:count], position[:count]

    def _tokens(self, prompt: PromptTokens, batch: int) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
        """Pack a token type's real tokens per image.

        Returns:
            ``(tokens float[B,M,D], positions float[B,M,D] or None, counts long[B], groups long[B,M])``,
            groups = the token's prompt rank within its image (its prompt index when shared).

        """
        mask = prompt.mask.bool()
        num_prompts, length = mask.shape
        prompt_index = torch.arange(num_prompts, device=mask.device)[:, None].expand(num_prompts, length)[
            mask
        ]
        values = prompt.tokens[mask]
        if not prompt.projected:
            values = self.language_projection.project(values)
        if prompt.stands_for_visual is not None:
            visual = prompt.stands_for_visual.to(device=mask.device, dtype=torch.bool)[prompt_index]
            placeholder, _ = self._learned(IMAGE_QUERY, 1)  # [1,D]
            values = values + visual[:, None].to(values.dtype) * placeholder.to(values.dtype)
        if prompt.positions is not None and not prompt.projected:
            raise ValueError("token positions are given at the interface width: projected tokens only")
        positions = None if prompt.positions is None else prompt.positions[mask]
        if prompt.image is None:
            counts = torch.full((batch,), values.shape[0], dtype=torch.long, device=mask.device)
            return (
                values.unsqueeze(0).expand(batch, -1, -1),
                None if positions is None else positions.unsqueeze(0).expand(batch, -1, -1),
                counts,
                prompt_index.unsqueeze(0).expand(batch, -1),
            )
        image = prompt.image.to(device=mask.device, dtype=torch.long)
        prompt_rank, _ = _rank_within(image, batch)
        owner = image[prompt_index]
        rank, counts = _rank_within(owner, batch)
        width = int(counts.max()) if batch else 0
        packed = values.new_zeros(batch, width, values.shape[-1])
        packed = packed.index_put((owner, rank), values)
        packed_positions = None
        if positions is not None:
            packed_positions = positions.new_zeros(batch, width, positions.shape[-1])
            packed_positions = packed_positions.index_put((owner, rank), positions)
        groups = torch.zeros(batch, width, dtype=torch.long, device=mask.device)
        groups = groups.index_put((owner, rank), prompt_rank[prompt_index])
        return packed, packed_positions, counts, groups

    def _sentences(self, prompt: PromptTokens, batch: int, width: int) -> Tensor:
        """float[B,width,D]: each per-prompt query's projected sentence vector, in query order.

        Query j of an image is its j-th prompt (shared prompts: prompt j for every image); padded
        query slots get zeros.
        """
        sentence = prompt.sentence
        if sentence is None:
            raise ValueError("the prompt has no sentence vectors")
        if sentence.shape[0] != prompt.num_prompts:
            raise ValueError(f"sentence has {sentence.shape[0]} rows for {prompt.num_prompts} prompts")
        values = sentence if prompt.projected else self.language_projection.project(sentence)
        if prompt.image is None:
            return values.unsqueeze(0).expand(batch, -1, -1)
        image = prompt.image.to(device=values.device, dtype=torch.long)
        rank, _ = _rank_within(image, batch)
        packed = values.new_zeros(batch, width, values.shape[-1])
        return packed.index_put((image, rank), values)

    def _assemble(
        self,
        prompts: InterfacePrompts,
        batch: int,
        device: torch.device,
        visual: Mapping[str, PromptTokens] | None = None,
    ) -> tuple[CompiledPrototype, Tensor, Tensor]:
        """Compile the batch's layout; the sequence float[B,S,D] and its positions float[B,S,D].

        ``visual``: the visual token types' first-level tokens, laid out as ``prompts.tokens``.
        """
        sizes: dict[str, int | Tensor] = {}
        groups: dict[str, Tensor] = {}
        tokens: dict[str, Tensor] = {}
        token_positions: dict[str, Tensor | None] = {}
        sentences: dict[str, Tensor] = {}  # per-prompt query type -> float[B,width,D] added content
        all_tokens = dict(prompts.tokens)
        for name, prompt in (visual or {}).items():
            if name in all_tokens:
                raise ValueError(f"{name!r} is both in prompts.tokens and prompts.visual")
            all_tokens[name] = prompt
        for name, prompt in all_tokens.items():
            if kind_of(name) != "tokens":
                raise ValueError(f"prompts.tokens names {name!r}, which is not a token type")
            tokens[name], token_positions[name], sizes[name], groups[name] = self._tokens(prompt, batch)
        for name, size in prompts.learned.items():
            if kind_of(name) == "tokens":
                raise ValueError(f"prompts.learned names the token type {name!r}; pass it in prompts.tokens")
            sizes[name] = size
        for name, token_type in prompts.per_prompt.items():
            if name in sizes:
                raise ValueError(f"{name!r} is both in prompts.learned and prompts.per_prompt")
            if token_type not in all_tokens:
                raise ValueError(
                    f"prompts.per_prompt[{name!r}] reads {token_type!r}, "
                    "absent from prompts.tokens and prompts.visual"
                )
            prompt = all_tokens[token_type]
            if prompt.image is None:
                count: int | Tensor = prompt.num_prompts
                width = prompt.num_prompts
            else:
                count = torch.bincount(prompt.image.to(device=device, dtype=torch.long), minlength=batch)
                width = int(count.max()) if batch else 0
            sizes[name] = count
            groups[name] = torch.arange(width, device=device).unsqueeze(0).expand(batch, -1)
            if prompt.sentence is not None:
                sentences[name] = self._sentences(prompt, batch, width)
        # FIND's conditional attention: swaps drawn per training forward (the prototype's `conditional`)
        prototype = self.prototype.conditioned(sizes, prompts.generator) if self.training else self.prototype
        compiled = prototype.compile(sizes, batch, device, groups)

        contents, positions = [], []
        for name in compiled.order:
            width = compiled.slices[name].stop - compiled.slices[name].start
            if kind_of(name) == "tokens":
                block = tokens[name]
                contents.append(block)
                given = token_positions[name]
                positions.append(torch.zeros_like(block) if given is None else given)
            else:
                content, position = self._learned(name, width)
                block = content.unsqueeze(0).expand(batch, -1, -1)
                if name in sentences:
                    block = block + sentences[name].to(block.dtype)
                contents.append(block)
                positions.append(position.unsqueeze(0).expand(batch, -1, -1))
        dtype = contents[0].dtype
        for block in contents:
            dtype = torch.promote_types(dtype, block.dtype)
        sequence = torch.cat([block.to(dtype) for block in contents], dim=1)
        return compiled, sequence, torch.cat([block.to(dtype) for block in positions], dim=1)

    def _predict(
        self,
        x: Tensor,
        compiled: CompiledPrototype,
        num_proposal_rows: int,
        mask_features: Tensor,
        target_size: tuple[int, int] | None,
        image_term: Tensor | None = None,
        mask_padding: Tensor | None = None,
    ) -> tuple[LayerOutput, Tensor | None]:
        """Heads on the normalised sequence; the next layer's feature mask bool[B,P,h*w] of proposal rows.

        ``image_term``: float[B,1,E] added to the image query's embedding (image pooling), or None.
        ``mask_padding``: bool[B,H/4,W/4], padded cells of the mask features (not mask-pooled), or None.
        """
        y = self.decoder_norm(x)
        embeddings = self.semantic(y)
        proposal_embeddings, logits = (
            self.mask_head(y[:, :num_proposal_rows], mask_features) if num_proposal_rows else (None, None)
        )
        if self.mask_pooling is not None and logits is not None:
            # [B,P,E], the proposal rows come first
            pooled = self.mask_pooling(logits, mask_features, mask_padding)
            embeddings = _add_to_rows(embeddings, slice(0, num_proposal_rows), pooled)
        if image_term is not None:
            embeddings = _add_to_rows(embeddings, compiled.slices[IMAGE_QUERY], image_term)
        output: LayerOutput = {}
        for name in compiled.outputs:
            span = compiled.slices[name]
            entry = {"embeddings": embeddings[:, span], "valid": compiled.valid[:, span]}
            if logits is not None and proposal_embeddings is not None and kind_of(name) == "proposals":
                entry["mask_logits"] = logits[:, span]
                entry["mask_embeddings"] = proposal_embeddings[:, span]
            else:
                # FIND compares spatial queries with segment proposals in this space (raw dot product)
                entry["mask_embeddings"] = self.mask_head.embed(y[:, span])
            output[name] = entry
        attend = None
        if logits is not None and target_size is not None:
            attend = attention_mask_from_logits(logits, target_size)
        return output, attend

    def _visual_rows(
        self, visual: Mapping[str, VisualTokens], compiled: CompiledPrototype, batch: int, num_levels: int
    ) -> list[dict[str, tuple[Tensor, Tensor]]]:
        """Per level, each laid-out visual type's packed ``(tokens, positions)`` float[B,n,D]."""
        rows: list[dict[str, tuple[Tensor, Tensor]]] = [{} for _ in range(num_levels)]
        for name, tokens in visual.items():
            if name not in compiled.slices:  # no prompt of this type has a point
                continue
            for level, per_level in enumerate(rows):
                packed, positions, _, _ = self._tokens(_level_prompt(tokens, level), batch)
                assert positions is not None  # visual tokens always carry positions
                per_level[name] = (packed, positions)
        return rows

    @staticmethod
    def _feature_mask(
        compiled: CompiledPrototype,
        previous: Tensor | None,
        num_keys: int,
        valid: Tensor | None = None,
        memories: Mapping[str, Tensor] | None = None,
    ) -> Tensor:
        """bool[B,S,h*w]: who reads which feature position (masked proposal rows: inside ``previous``).

        ``valid``: bool[B,h*w], each image's own positions (nobody reads padding), or None (all).
        ``memories``: ``{memory type: bool[B,h*w]}``, where each memory type's rows may read (an
        image's rows read all of it when that is nowhere on the image).
        """
        batch, length = compiled.batch_size, compiled.length
        reads = compiled.reads_features[None, :, None].expand(batch, length, num_keys)
        if valid is not None:
            reads = reads & valid[:, None]
        for name, allowed in (memories or {}).items():
            if name not in compiled.slices:
                continue
            inside = allowed if valid is None else allowed & valid
            inside = inside | ~inside.any(dim=-1, keepdim=True)  # an empty mask reads everything
            span = compiled.slices[name]
            memory_reads = reads[:, span] & inside[:, None]
            reads = torch.cat([reads[:, : span.start], memory_reads, reads[:, span.stop :]], dim=1)
        if previous is None:
            return reads
        rows = previous.shape[1]
        if valid is not None:
            # a mask only on padding is empty on the image
            previous = previous & valid[:, None]
        # Mask2Former: a proposal whose previous mask is empty reads every position (of its image,
        # as ``reads`` already excludes padding; a row left with no key at all is opened by the layer)
        previous = previous | ~previous.any(dim=-1, keepdim=True)
        masked = compiled.features_masked[None, :rows, None]
        proposals = reads[:, :rows] & (~masked | previous)
        return torch.cat([proposals, reads[:, rows:]], dim=1)

    def decode_pixels(
        self, features: Mapping[str, Tensor], padding_mask: Tensor | None = None
    ) -> PixelDecoderOutput:
        """The pixel decoder's output for ``features`` (as :meth:`forward` computes it first).

        Give it to :meth:`forward` as ``pixel`` to run several prompt rounds on one image's features
        without decoding them again (the interactive task's clicks).
        """
        return self.pixel_decoder(features, _effective_padding(padding_mask, features))

    def forward(
        self,
        features: Mapping[str, Tensor],
        prompts: InterfacePrompts,
        padding_mask: Tensor | None = None,
        pixel: PixelDecoderOutput | None = None,
    ) -> InterfaceOutput:
        """Run the interface.

        Args:
            features: the frozen pyramid ``{"res2": float[B,C2,H/4,W/4], ..., "res5":
                float[B,C5,H/32,W/32]}``.
            prompts: the types to instantiate and the prompt tokens (:class:`InterfacePrompts`).
            padding_mask: bool[B,H,W] at input resolution, True on padded pixels (a batch's
                ``padding_mask``); a feature cell is padding when it is entirely padding. None, or a
                mask without padding, runs the unmasked interface.
            pixel: :meth:`decode_pixels` of these ``features`` and ``padding_mask``, computed once
                for several forwards; None decodes them here.

        Returns:
            :class:`InterfaceOutput` with ``num_layers + 1`` predictions; mask logits on padded cells
            are computed but mean nothing.

        """
        padding_mask = _effective_padding(padding_mask, features)
        if pixel is None:
            pixel = self.pixel_decoder(features, padding_mask)
        mask_features = pixel.mask_features
        batch = int(mask_features.shape[0])
        visual = (
            self.encode_visual_prompts(pixel, prompts.visual, padding_mask, prompts.generator)
            if prompts.visual
            else {}
        )
        for name, encoded in prompts.visual_tokens.items():
            if name in visual:
                raise ValueError(f"{name!r} is both in prompts.visual and prompts.visual_tokens")
            self._check_visual_type(name, "prompts.visual_tokens")
            if len(encoded.tokens) != len(pixel.levels):
                raise ValueError(
                    f"prompts.visual_tokens[{name!r}] has {len(encoded.tokens)} levels, the pixel decoder "
                    f"{len(pixel.levels)}"
                )
            visual[name] = encoded
        compiled, x, pos = self._assemble(
            prompts, batch, mask_features.device, {name: _level_prompt(v, 0) for name, v in visual.items()}
        )
        # [level] -> {visual type laid out: (tokens, positions) float[B,n,D]}, set before each layer
        visual_rows = self._visual_rows(visual, compiled, batch, len(pixel.levels))
        num_proposal_rows = sum(
            compiled.slices[name].stop - compiled.slices[name].start
            for name in compiled.order
            if kind_of(name) == "proposals"
        )
        # rows that read something: the features (always some key of their image), or a token this
        # batch gives them. A row of a token reader without any token here (a text entity's legend
        # token when another entity is visual, a prompt with an empty stroke) stays out of
        # cross-attention, where the layers' empty-row rule would open it to every key, features too
        cross_rows = (compiled.reads_features[None] & compiled.valid) | compiled.cross_tokens.any(dim=-1)
        sizes = pixel.sizes

        valid_keys = pixel.valid_keys()  # per level, once (not per layer)
        # the memories' reads of each level: the previous round's masks resized once per level
        memory_reads = [
            {
                name: attention_mask_from_logits(logits[:, None], size)[:, 0]
                for name, logits in prompts.memory_masks.items()
            }
            for size in sizes
        ]
        mask_padding = pixel.mask_padding

        # the whole-image pooling does not change across layers: computed once
        image_term = None
        if self.image_pooling is not None and IMAGE_QUERY in compiled.slices:
            whole = _image_weights(mask_features, mask_padding)
            image_term = self.image_pooling.pool(whole, mask_features)  # [B,1,E]

        prediction, previous = self._predict(
            x, compiled, num_proposal_rows, mask_features, sizes[0], image_term, mask_padding
        )
        predictions = [prediction]
        for i, layer in enumerate(self.layers):
            level = i % len(sizes)
            for name, (tokens, token_pos) in visual_rows[level].items():
                x = _replace_rows(x, compiled.slices[name], tokens)
                pos = _replace_rows(pos, compiled.slices[name], token_pos)
            keys, key_pos = pixel.memory(level)
            memory = torch.cat([keys, compiled.tokens(x).to(keys.dtype)], dim=1)
            memory_pos = torch.cat([key_pos, compiled.tokens(pos).to(key_pos.dtype)], dim=1)
            valid = None if valid_keys is None else valid_keys[level]
            feature_mask = self._feature_mask(compiled, previous, keys.shape[1], valid, memory_reads[level])
            cross = torch.cat([feature_mask, compiled.cross_tokens], dim=-1)
            x = layer(x, memory, cross, compiled.self_mask, pos, memory_pos, cross_rows)
            target = sizes[(i + 1) % len(sizes)] if i + 1 < len(self.layers) else None
            prediction, previous = self._predict(
                x, compiled, num_proposal_rows, mask_features, target, image_term, mask_padding
            )
            predictions.append(prediction)
        return InterfaceOutput(layers=predictions, logit_scale=self.logit_scale(), compiled=compiled)
