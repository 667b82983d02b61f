from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from findlit.interface.find import FINDInterface, InterfaceOutput, InterfacePrompts, PromptTokens
from findlit.interface.heads import attention_mask_from_logits

CHANNELS = {"res2": 8, "res3": 16, "res4": 24, "res5": 32}
STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
TEXT_DIM, HIDDEN, LAYERS, PROPOSALS, EMBED = 12, 32, 2, 8, 16
H, W = 64, 96

OBJECT = "proposals.vision.object"
GROUNDING = "proposals.vision.grounding"
ENTITY = "proposals.interleave.entity"
IMAGE = "queries.vision.image"
CLASS_Q, CLASS_T = "queries.language.class", "tokens.language.class"
DESC_Q, DESC_T = "queries.language.description", "tokens.language.description"
CAPTION_Q, CAPTION_T = "queries.language.caption", "tokens.language.caption"
LEGEND_Q, LEGEND_T = "queries.interleave.legend", "tokens.interleave.legend"


def _interface(**kwargs: Any) -> FINDInterface:
    torch.manual_seed(0)
    return FINDInterface(
        CHANNELS,
        TEXT_DIM,
        hidden_dim=HIDDEN,
        num_layers=LAYERS,
        num_heads=4,
        ffn_dim=64,
        num_proposals=PROPOSALS,
        embed_dim=EMBED,
        **kwargs,
    )


def _features(batch: int, seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        level: torch.randn(batch, c, H // STRIDES[level], W // STRIDES[level], generator=g)
        for level, c in CHANNELS.items()
    }


def _text(num: int, length: int = 4, image: Tensor | None = None, seed: int = 1) -> PromptTokens:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, length + 1, (num,), generator=g)
    mask = torch.arange(length)[None] < lengths[:, None]
    tokens = torch.randn(num, length, TEXT_DIM, generator=g) * mask[..., None]
    return PromptTokens(tokens, mask, image)


def _segmentation(k: int = 5) -> InterfacePrompts:
    return InterfacePrompts(
        learned={OBJECT: PROPOSALS, IMAGE: 1},
        tokens={CLASS_T: _text(k)},
        per_prompt={CLASS_Q: CLASS_T},
    )


def _grounding(per_image: list[int]) -> InterfacePrompts:
    image = torch.repeat_interleave(torch.arange(len(per_image)), torch.tensor(per_image))
    return InterfacePrompts(
        learned={GROUNDING: PROPOSALS},
        tokens={DESC_T: _text(len(image), image=image)},
        per_prompt={DESC_Q: DESC_T},
    )


def _mixed(batch: int) -> InterfacePrompts:
    image = torch.arange(batch).repeat_interleave(2)
    return InterfacePrompts(
        learned={OBJECT: PROPOSALS, IMAGE: 1, GROUNDING: PROPOSALS, ENTITY: PROPOSALS},
        tokens={
            CLASS_T: _text(5),
            DESC_T: _text(2 * batch, image=image, seed=2),
            CAPTION_T: _text(batch, image=torch.arange(batch), seed=3),
            LEGEND_T: _text(3 * batch, image=torch.arange(batch).repeat_interleave(3), seed=4),
        },
        per_prompt={CLASS_Q: CLASS_T, DESC_Q: DESC_T, CAPTION_Q: CAPTION_T, LEGEND_Q: LEGEND_T},
    )


def _check(out: InterfaceOutput, batch: int, expected: dict[str, int]) -> None:
    assert len(out.layers) == LAYERS + 1
    for layer in out.layers:
        assert set(layer) == set(expected)
        for name, n in expected.items():
            assert layer[name]["embeddings"].shape == (batch, n, EMBED)
            assert layer[name]["valid"].shape == (batch, n)
            assert torch.isfinite(layer[name]["embeddings"]).all()
            if name.startswith("proposals."):
                assert layer[name]["mask_logits"].shape == (batch, n, H // 4, W // 4)
            else:
                assert "mask_logits" not in layer[name]
    assert out.logit_scale.dim() == 0


@pytest.mark.parametrize("batch", [1, 3])
def test_generic_segmentation_shapes(batch: int) -> None:
    out = _interface()(_features(batch), _segmentation())
    _check(out, batch, {OBJECT: PROPOSALS, IMAGE: 1, CLASS_Q: 5})
    classes = out.last[CLASS_Q]["embeddings"]
    assert out.class_logits(OBJECT, classes).shape == (batch, PROPOSALS, 5)
    assert out.class_logits(OBJECT, classes[0], no_object=torch.zeros(EMBED)).shape == (batch, PROPOSALS, 6)


def test_mask_pooling_adds_to_proposal_embeddings_only() -> None:
    prompts = _segmentation()
    plain = _interface()
    pooled = _interface(mask_pooling=True)
    pooled.load_state_dict(plain.state_dict(), strict=False)  # same weights but the pooling MLP
    with torch.no_grad():
        a, b = plain(_features(2), prompts), pooled(_features(2), prompts)
    _check(b, 2, {OBJECT: PROPOSALS, IMAGE: 1, CLASS_Q: 5})
    first = pooled.mask_pooling(
        a.layers[0][OBJECT]["mask_logits"], pooled.pixel_decoder(_features(2)).mask_features
    )
    # before the first layer, proposals differ from the plain interface by exactly the pooled term
    assert torch.allclose(
        b.layers[0][OBJECT]["embeddings"], a.layers[0][OBJECT]["embeddings"] + first, atol=1e-5
    )
    assert torch.equal(b.layers[0][IMAGE]["embeddings"], a.layers[0][IMAGE]["embeddings"])
    assert torch.equal(b.layers[0][OBJECT]["mask_logits"], a.layers[0][OBJECT]["mask_logits"])
    assert plain.mask_pooling is None


def _image_pooled_pair() -> tuple[FINDInterface, FINDInterface]:
    """An interface and the same one (same weights) with image pooling."""
    plain = _interface()
    pooled = _interface(image_pooling=True)
    pooled.load_state_dict(plain.state_dict(), strict=False)  # same weights but the pooling MLP
    assert pooled.image_pooling is not None
    return plain, pooled


def test_image_pooling_adds_the_mean_mask_feature_to_the_image_query_only() -> None:
    prompts = _segmentation()
    plain, pooled = _image_pooled_pair()
    features = _features(2)
    with torch.no_grad():
        a, b = plain(features, prompts), pooled(features, prompts)
        mask_features = pooled.pixel_decoder(features).mask_features  # [B,C,h,w]
        count = mask_features.shape[-2] * mask_features.shape[-1]
        # the pooled mean (with the one unit of prior weight) through the pooling MLP
        mean = mask_features.flatten(2).sum(-1) / (count + 1.0)
        expected = pooled.image_pooling.mlp(mean)[:, None]
    for layer in (0, -1):
        assert torch.allclose(
            b.layers[layer][IMAGE]["embeddings"], a.layers[layer][IMAGE]["embeddings"] + expected, atol=1e-5
        )
        assert torch.equal(b.layers[layer][OBJECT]["embeddings"], a.layers[layer][OBJECT]["embeddings"])
        assert torch.equal(b.layers[layer][CLASS_Q]["embeddings"], a.layers[layer][CLASS_Q]["embeddings"])
    assert plain.image_pooling is None


def test_grounding_shapes_and_padding() -> None:
    out = _interface()(_features(2), _grounding([2, 3]))
    _check(out, 2, {GROUNDING: PROPOSALS, DESC_Q: 3})
    assert out.last[DESC_Q]["valid"].tolist() == [[True, True, False], [True, True, True]]


def test_retrieval_shapes() -> None:
    prompts = InterfacePrompts(
        learned={IMAGE: 1},
        tokens={CAPTION_T: _text(2, image=torch.tensor([1, 0]))},
        per_prompt={CAPTION_Q: CAPTION_T},
    )
    _check(_interface()(_features(2), prompts), 2, {IMAGE: 1, CAPTION_Q: 1})


def test_interleave_shapes() -> None:
    prompts = InterfacePrompts(
        learned={ENTITY: PROPOSALS},
        tokens={LEGEND_T: _text(3, image=torch.tensor([0, 0, 1]))},
        per_prompt={LEGEND_Q: LEGEND_T},
    )
    _check(_interface()(_features(2), prompts), 2, {ENTITY: PROPOSALS, LEGEND_Q: 2})


@pytest.mark.parametrize("batch", [1, 3])
def test_mixed_batch_shapes(batch: int) -> None:
    out = _interface()(_features(batch), _mixed(batch))
    _check(
        out,
        batch,
        {
            OBJECT: PROPOSALS,
            GROUNDING: PROPOSALS,
            ENTITY: PROPOSALS,
            IMAGE: 1,
            CLASS_Q: 5,
            DESC_Q: 2,
            CAPTION_Q: 1,
            LEGEND_Q: 3,
        },
    )


def test_each_query_reads_only_its_own_prompt() -> None:
    out = _interface()(_features(2), _grounding([2, 3]))
    compiled = out.compiled
    rows, columns = compiled.slices[DESC_Q], compiled.token_slices[DESC_T]
    prompts = _grounding([2, 3]).tokens[DESC_T]
    owner = prompts.image
    assert owner is not None
    for b in range(2):
        ids = torch.arange(len(owner))[owner == b]
        lengths = prompts.mask[ids].sum(1)
        expected = torch.repeat_interleave(torch.arange(len(ids)), lengths)  # prompt rank of each token
        reads = compiled.cross_tokens[b, rows, columns]
        for j in range(len(ids)):
            assert reads[j, : len(expected)].tolist() == (expected == j).tolist()
            assert not reads[j, len(expected) :].any()


def test_a_caption_embedding_does_not_depend_on_the_other_captions_of_its_image() -> None:
    # independent prompts: retrieval galleries read all of an image's captions in one pass; a
    # caption that saw its siblings would carry their content (a leak of the ground truth)
    interface = _interface().eval()
    captions = _text(3, image=torch.tensor([0, 0, 0]))
    first = PromptTokens(captions.tokens[:1], captions.mask[:1], torch.tensor([0]))

    def caption_embeddings(prompt: PromptTokens) -> Tensor:
        prompts = InterfacePrompts(
            learned={IMAGE: 1}, tokens={CAPTION_T: prompt}, per_prompt={CAPTION_Q: CAPTION_T}
        )
        with torch.no_grad():
            return interface(_features(1), prompts).last[CAPTION_Q]["embeddings"][0]

    alone, together = caption_embeddings(first), caption_embeddings(captions)
    assert together.shape[0] == 3
    torch.testing.assert_close(together[0], alone[0])
    assert not torch.allclose(together[1], together[0])


def test_gradients_reach_interface_parameters_only() -> None:
    interface = _interface()
    features = _features(2)
    out = interface(features, _mixed(2))
    # class logits with the learned no-object class, as segmentation uses them
    loss = out.class_logits(OBJECT, out.last[CLASS_Q]["embeddings"], no_object=interface.no_object()).mean()
    # sentence-level class embeddings (APE) are made outside the decoder, by their own projection
    loss = loss + out.class_logits(OBJECT, interface.embed_sentences(torch.randn(3, TEXT_DIM))).mean()
    for layer in out.layers:
        for entry in layer.values():
            loss = loss + entry["embeddings"].pow(2).mean()
            if "mask_logits" in entry:
                loss = loss + entry["mask_logits"].sigmoid().mean()
    loss.backward()
    assert all(not f.requires_grad and f.grad is None for f in features.values())
    unused = ("embeddings.memories", "positions.memories")  # no memory type in this batch
    for name, parameter in interface.named_parameters():
        if name.startswith(unused):
            assert parameter.grad is None, name
        else:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    # copies share their root's parameters: grounding/entity proposals feed the object proposals
    assert interface.embeddings["proposals__vision__object"].shape == (PROPOSALS, HIDDEN)
    assert set(interface.embeddings) == {
        "proposals__vision__object",
        "queries__vision__image",
        "memories__vision__spatial",
    }


def test_bf16_autocast_runs() -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _interface()(_features(2), _mixed(2))
    for layer in out.layers:
        for entry in layer.values():
            assert torch.isfinite(entry["embeddings"].float()).all()


def test_absent_types_are_absent() -> None:
    out = _interface()(_features(2), InterfacePrompts(learned={IMAGE: 1}))
    assert set(out.last) == {IMAGE}
    with pytest.raises(ValueError):
        _interface()(_features(2), InterfacePrompts())
    with pytest.raises(ValueError):
        _interface()(_features(2), InterfacePrompts(learned={OBJECT: PROPOSALS + 1}))


def test_cross_mask_follows_previous_masks_and_masked_rows_ignore_outside() -> None:
    interface = _interface().eval()
    captured: list[tuple[Tensor, ...]] = []

    def hook(module: torch.nn.Module, args: tuple[Tensor, ...]) -> None:
        captured.append(args)

    interface.layers[1].cross_attention.register_forward_pre_hook(hook)
    with torch.no_grad():
        out = interface(_features(2), _segmentation())
    queries, memory, attend, query_pos, memory_pos = captured[0]
    compiled = out.compiled
    level_size = (H // 16, W // 16)  # layer 1 reads res4
    hw = level_size[0] * level_size[1]
    previous = attention_mask_from_logits(out.layers[1][OBJECT]["mask_logits"], level_size)
    previous = previous | ~previous.any(-1, keepdim=True)
    objects, image, classes = compiled.slices[OBJECT], compiled.slices[IMAGE], compiled.slices[CLASS_Q]
    assert torch.equal(attend[:, objects, :hw], previous)
    assert attend[:, image, :hw].all() and not attend[:, image, hw:].any()
    assert not attend[:, classes, :hw].any()
    assert torch.equal(attend[:, :, hw:], compiled.cross_tokens)
    assert not attend[:, compiled.slices[CLASS_T]].any()  # tokens read nothing

    # perturbing memory outside a proposal's mask leaves its cross-attention output unchanged
    row = objects.start
    outside = ~attend[0, row]
    assert outside[:hw].any() and attend[0, row, :hw].any()
    perturbed = memory.clone()
    perturbed[0, outside] += 10 * torch.randn(int(outside.sum()), HIDDEN)
    layer = interface.layers[1].cross_attention
    with torch.no_grad():
        before = layer(queries, memory, attend, query_pos, memory_pos)
        after = layer(queries, perturbed, attend, query_pos, memory_pos)
    assert torch.allclose(before[0, row], after[0, row], atol=1e-5)
    assert not torch.allclose(before[0, image.start], after[0, image.start])


def test_rejects_cross_masked_non_proposals() -> None:
    from findlit.interface.prototype import Prototype

    proto = Prototype.from_dict(
        {IMAGE: {"self_attend": [IMAGE], "cross_attend": ["features"], "cross_masked": True, "output": True}}
    )
    with pytest.raises(ValueError, match="cross_masked"):
        _interface(prototype=proto)


def test_sentence_vectors_set_each_per_prompt_query_apart() -> None:
    """Same tokens for every prompt: queries are equal without sentences, differ with them, per image."""
    interface = _interface()
    tokens = torch.randn(1, 3, TEXT_DIM).expand(4, -1, -1).clone()  # four prompts, identical tokens
    mask = torch.ones(4, 3, dtype=torch.bool)
    image = torch.tensor([0, 0, 1, 1])
    sentence = torch.randn(4, TEXT_DIM)

    def queries(with_sentence: bool) -> Tensor:
        prompt = PromptTokens(tokens, mask, image, sentence=sentence if with_sentence else None)
        prompts = InterfacePrompts(
            learned={GROUNDING: PROPOSALS}, tokens={DESC_T: prompt}, per_prompt={DESC_Q: DESC_T}
        )
        return interface(_features(2), prompts).last[DESC_Q]["embeddings"]  # [B=2, 2, E]

    plain, informed = queries(False), queries(True)
    torch.testing.assert_close(plain[0, 0], plain[0, 1])
    assert not torch.allclose(informed[0, 0], informed[0, 1], atol=1e-4)
    assert not torch.allclose(informed[1, 0], informed[1, 1], atol=1e-4)
    # image 1's first query gets prompt 2's sentence: swapping prompts 2 and 3 swaps its queries
    swapped = PromptTokens(tokens, mask, image, sentence=sentence[[0, 1, 3, 2]])
    prompts = InterfacePrompts(
        learned={GROUNDING: PROPOSALS}, tokens={DESC_T: swapped}, per_prompt={DESC_Q: DESC_T}
    )
    out = interface(_features(2), prompts).last[DESC_Q]["embeddings"]
    torch.testing.assert_close(out[1, 0], informed[1, 1])
    torch.testing.assert_close(out[0], informed[0])


def test_sentence_rows_must_match_prompts() -> None:
    prompt = _text(3)
    prompt.sentence = torch.randn(2, TEXT_DIM)
    prompts = InterfacePrompts(
        learned={OBJECT: PROPOSALS}, tokens={CLASS_T: prompt}, per_prompt={CLASS_Q: CLASS_T}
    )
    with pytest.raises(ValueError, match="2 rows for 3 prompts"):
        _interface()(_features(1), prompts)


def test_every_output_carries_mask_embeddings_and_proposal_masks_come_from_them() -> None:
    interface = _interface().eval()
    with torch.no_grad():
        out = interface(_features(2), _segmentation())
        mask_features = interface.pixel_decoder(_features(2)).mask_features
    for name, entry in out.last.items():
        assert entry["mask_embeddings"].shape[:2] == entry["embeddings"].shape[:2], name
    objects = out.last[OBJECT]
    expected = torch.einsum("bqc,bchw->bqhw", objects["mask_embeddings"], mask_features)
    assert torch.allclose(objects["mask_logits"], expected, atol=1e-5)


MEMORY = "memories.vision.spatial"


def test_memory_rows_read_only_inside_their_images_previous_mask() -> None:
    interface = _interface().eval()
    captured: list[tuple[Tensor, ...]] = []
    interface.layers[0].cross_attention.register_forward_pre_hook(lambda module, args: captured.append(args))
    previous = torch.full((2, H // 4, W // 4), -5.0)
    previous[0, : H // 8, : W // 8] = 5.0  # image 0: its top-left quarter; image 1: nothing
    prompts = _segmentation()
    prompts.learned[MEMORY] = 4
    prompts.memory_masks[MEMORY] = previous
    with torch.no_grad():
        out = interface(_features(2), prompts)
    attend = captured[0][2]
    level_size = (H // 32, W // 32)  # layer 0 reads res5
    hw = level_size[0] * level_size[1]
    inside = attention_mask_from_logits(previous[:, None], level_size)[:, 0]
    memories = out.compiled.slices[MEMORY]
    assert inside[0].any() and not inside[0].all()
    assert torch.equal(attend[0, memories, :hw], inside[0].expand(4, hw))
    assert attend[1, memories, :hw].all()  # an empty mask reads every position
    assert out.last[MEMORY]["embeddings"].shape == (2, 4, EMBED)
