"""The visual-prompt hook: masks -> tokens read from the pixel decoder's own features.

The interface's :class:`~findlit.interface.visual_prompts.VisualPromptEncoder` reads the pixel
decoder's levels at points drawn from each prompt's masks; ``queries.vision.spatial`` (FIND's default
prototype) cross-attends to those tokens, one query per prompt.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from torch import Tensor

from findlit.interface.find import FINDInterface, InterfaceOutput, InterfacePrompts
from findlit.interface.pixel_decoder import LEVELS, PixelDecoderOutput
from findlit.interface.prompts import boxes_to_masks, points_to_masks
from findlit.interface.visual_prompts import NEGATIVE, POSITIVE, VisualPrompts, VisualTokens, points_per_mask
from tests.interface.test_find import (
    CHANNELS,
    EMBED,
    HIDDEN,
    IMAGE,
    OBJECT,
    PROPOSALS,
    STRIDES,
    TEXT_DIM,
    H,
    W,
    _features,
    _interface,
    _mixed,
    _text,
)
from tests.interface.test_find_padding import ALONE, FRAME, _origin, _own_features, _padded_batch

SPATIAL_Q, SPATIAL_T = "queries.vision.spatial", "tokens.vision.spatial"
SEGMENT = "proposals.vision.segment"
NEAR, FAR = (slice(8, 16), slice(8, 24)), (slice(32, 64), slice(64, 96))  # pixel regions of the frame


def _visual_interface(**kwargs: Any) -> FINDInterface:
    """Three layers, so that every level's tokens are read by some layer."""
    torch.manual_seed(0)
    options: dict[str, Any] = {
        "hidden_dim": HIDDEN,
        "num_layers": 3,
        "num_heads": 4,
        "ffn_dim": 64,
        "num_proposals": PROPOSALS,
        "embed_dim": EMBED,
        "visual_prompts": True,
    }
    return FINDInterface(CHANNELS, TEXT_DIM, **(options | kwargs))


def _stroke(region: tuple[slice, slice], size: tuple[int, int] = (H, W)) -> Tensor:
    mask = torch.zeros(size, dtype=torch.bool)
    mask[region] = True
    return mask


def _prompts(visual: VisualPrompts, seed: int = 0) -> InterfacePrompts:
    return InterfacePrompts(
        learned={OBJECT: PROPOSALS, IMAGE: 1, SEGMENT: PROPOSALS},
        visual={SPATIAL_T: visual},
        per_prompt={SPATIAL_Q: SPATIAL_T},
        generator=torch.Generator().manual_seed(seed),
    )


def _cells(region: tuple[slice, slice], stride: int, margin: int) -> tuple[slice, slice]:
    """The cells of a stride-``stride`` grid that a pixel region touches, ``margin`` cells around."""
    rows, cols = region
    return (
        slice(max(rows.start // stride - margin, 0), -(-rows.stop // stride) + margin),
        slice(max(cols.start // stride - margin, 0), -(-cols.stop // stride) + margin),
    )


def _perturbed(
    pixel: PixelDecoderOutput, image: int, region: tuple[slice, slice], margin: int
) -> PixelDecoderOutput:
    """``pixel`` with noise added to one image's level features over a pixel region (every level)."""
    levels = []
    for name, level in zip(LEVELS, pixel.levels, strict=True):
        rows, cols = _cells(region, STRIDES[name], margin)
        changed = level.clone()
        changed[image, :, rows, cols] += torch.randn_like(changed[image, :, rows, cols])
        levels.append(changed)
    return dataclasses.replace(pixel, levels=levels)


def _encode(
    interface: FINDInterface, pixel: PixelDecoderOutput, visual: VisualPrompts, name: str = SPATIAL_T
) -> VisualTokens:
    """``visual`` as tokens of type ``name``, their points drawn by a generator seeded 3."""
    tokens = interface.encode_visual_prompts(pixel, {name: visual}, None, torch.Generator().manual_seed(3))
    return tokens[name]


def test_without_visual_prompts_the_outputs_are_those_of_an_interface_without_the_hook() -> None:
    plain, hooked = _interface(), _interface(visual_prompts=True)
    assert hooked.visual_prompt_encoder is not None and plain.visual_prompt_encoder is None
    old = plain.state_dict()
    assert {k: v for k, v in hooked.state_dict().items() if k in old}.keys() == old.keys()
    assert all(torch.equal(old[k], v) for k, v in hooked.state_dict().items() if k in old)
    features = _features(2)
    with torch.no_grad():
        expected, got = plain(features, _mixed(2)), hooked(features, _mixed(2))
    for before, after in zip(expected.layers, got.layers, strict=True):
        assert before.keys() == after.keys()
        for name in before:
            for key in before[name]:
                assert torch.equal(before[name][key], after[name][key]), (name, key)


def test_tokens_are_read_from_the_pixel_decoders_features_at_the_stroke() -> None:
    interface = _visual_interface()
    with torch.no_grad():
        pixel = interface.pixel_decoder(_features(2))
        visual = VisualPrompts(_stroke(NEAR)[None], torch.tensor([0]))
        tokens = _encode(interface, pixel, visual)
        # bilinear reads reach one cell beyond the stroke's; FAR's cells are not among them
        near = _encode(interface, _perturbed(pixel, 0, NEAR, margin=1), visual)
        far = _encode(interface, _perturbed(pixel, 0, FAR, margin=0), visual)
        other_image = _encode(interface, _perturbed(pixel, 1, NEAR, margin=1), visual)
    assert len(tokens.tokens) == len(LEVELS) and tokens.valid.all()
    assert tokens.tokens[0].shape == (1, int(tokens.valid.shape[1]), HIDDEN)
    for level in range(len(LEVELS)):
        assert not torch.allclose(near.tokens[level], tokens.tokens[level])
        assert torch.equal(far.tokens[level], tokens.tokens[level])
        assert torch.equal(other_image.tokens[level], tokens.tokens[level])


def test_positive_and_negative_strokes_give_different_tokens_from_the_same_features() -> None:
    interface = _visual_interface()
    stroke = _stroke((slice(10, 12), slice(20, 22)))[None]  # 4 pixels: every one is a point
    empty = torch.zeros_like(stroke)
    with torch.no_grad():
        pixel = interface.pixel_decoder(_features(1))
        positive = _encode(interface, pixel, VisualPrompts(stroke, torch.tensor([0])))
        negative = _encode(interface, pixel, VisualPrompts(empty, torch.tensor([0]), negative=stroke))
    indicator = interface.visual_prompt_encoder.indicator.weight.detach()  # type: ignore[union-attr]
    for level in range(len(LEVELS)):
        pos, neg = positive.tokens[level][positive.valid], negative.tokens[level][negative.valid]
        assert pos.shape == neg.shape == (4, HIDDEN)
        assert not torch.allclose(pos, neg)
        # the same points (in another order), only the indicator differs
        pos_features, neg_features = pos - indicator[POSITIVE], neg - indicator[NEGATIVE]
        order = (pos_features[:, 0].argsort(), neg_features[:, 0].argsort())
        assert torch.allclose(pos_features[order[0]], neg_features[order[1]], atol=1e-6)


def _spatial(out: InterfaceOutput, layer: int = -1) -> Tensor:
    return out.layers[layer][SPATIAL_Q]["embeddings"]


def test_the_spatial_query_reads_its_own_stroke_and_gradients_reach_the_encoder() -> None:
    interface = _visual_interface()
    features = _features(2)
    strokes = torch.stack([_stroke(NEAR), _stroke(FAR), _stroke((slice(0, 20), slice(40, 60)))])
    owners = torch.tensor([0, 0, 1])
    out = interface(features, _prompts(VisualPrompts(strokes, owners)))
    assert _spatial(out).shape == (2, 2, EMBED)
    assert out.last[SPATIAL_Q]["valid"].tolist() == [[True, True], [True, False]]
    assert torch.isfinite(_spatial(out)).all()

    moved = strokes.clone()
    moved[0] = _stroke((slice(40, 56), slice(8, 24)))
    with torch.no_grad():
        again = interface(features, _prompts(VisualPrompts(moved, owners)))
    assert not torch.allclose(_spatial(again)[0, 0], _spatial(out)[0, 0])
    # the other prompts' queries read only their own strokes
    assert torch.allclose(_spatial(again)[0, 1], _spatial(out)[0, 1], atol=1e-5)
    assert torch.allclose(_spatial(again)[1, 0], _spatial(out)[1, 0], atol=1e-5)
    # segment proposals attend to the image's visual tokens
    assert not torch.allclose(again.last[SEGMENT]["mask_logits"][0], out.last[SEGMENT]["mask_logits"][0])

    _spatial(out)[out.last[SPATIAL_Q]["valid"]].square().sum().backward()
    encoder = interface.visual_prompt_encoder
    assert encoder is not None
    for name, parameter in encoder.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_points_boxes_and_scribbles_become_strokes() -> None:
    interface = _visual_interface()
    box = boxes_to_masks(torch.tensor([[8.0, 8.0, 24.0, 16.0]]), (H, W))
    clicks = points_to_masks(torch.tensor([[[50.0, 40.0], [60.0, 44.0]]]), (H, W), radius=2.0)
    visual = VisualPrompts(torch.cat([box, clicks]), torch.tensor([0, 0]), negative=torch.cat([clicks, box]))
    out = interface(_features(1), _prompts(visual))
    assert _spatial(out).shape == (1, 2, EMBED) and torch.isfinite(_spatial(out)).all()
    assert not torch.allclose(_spatial(out)[0, 0], _spatial(out)[0, 1])


def test_an_image_without_visual_prompts_and_an_empty_stroke_are_fine() -> None:
    interface = _visual_interface()
    features = _features(3)
    strokes = torch.stack([_stroke(NEAR), torch.zeros(H, W, dtype=torch.bool)])
    with torch.no_grad():
        out = interface(features, _prompts(VisualPrompts(strokes, torch.tensor([2, 2]))))
    assert out.last[SPATIAL_Q]["valid"].tolist() == [[False, False], [False, False], [True, True]]
    assert out.compiled.counts[SPATIAL_T].tolist()[:2] == [0, 0]
    for layer in out.layers:
        for entry in layer.values():
            assert all(torch.isfinite(value).all() for value in entry.values() if value.is_floating_point())
    # no prompt at all: the types are absent, the rest runs
    with torch.no_grad():
        none = interface(features, _prompts(VisualPrompts(strokes[:0], torch.zeros(0, dtype=torch.long))))
    assert SPATIAL_Q not in none.last and SPATIAL_T not in none.compiled.order


@pytest.mark.parametrize("side", ["right", "left"])
def test_a_padded_image_reads_the_tokens_it_reads_alone(side: str) -> None:
    """A small stroke (every pixel a point) at the image's border next to the padding."""
    interface = _visual_interface(max_visual_points=64)
    top, left = _origin(side)
    edge = slice(ALONE[1] - 2, ALONE[1]) if side == "right" else slice(0, 2)
    alone_stroke = _stroke((slice(20, 22), edge), ALONE)
    framed = torch.zeros(2, *FRAME, dtype=torch.bool)
    framed[0, top : top + ALONE[0], left : left + ALONE[1]] = alone_stroke
    # the padded stroke spills onto the padding: cut to its image
    spill = slice(left + edge.stop, left + edge.stop + 2) if side == "right" else slice(left - 2, left)
    framed[0, 20 + top : 22 + top, spill] = True
    framed[1] = _stroke((slice(60, 80), slice(10, 40)), FRAME)

    alone = _own_features(3, ALONE)
    features, padding_mask = _padded_batch(alone, side)
    with torch.no_grad():
        expected = interface(alone, _prompts(VisualPrompts(alone_stroke[None], torch.tensor([0]))))
        got = interface(features, _prompts(VisualPrompts(framed, torch.tensor([0, 1]))), padding_mask)
    assert got.compiled.counts[SPATIAL_T].tolist() == [4, 64]
    for before, after in zip(expected.layers, got.layers, strict=True):
        assert torch.allclose(
            after[SPATIAL_Q]["embeddings"][0, :1], before[SPATIAL_Q]["embeddings"][0], atol=1e-5
        )


def test_each_image_shares_its_point_budget_among_its_non_empty_masks() -> None:
    masks = torch.zeros(4, 8, 8, dtype=torch.bool)
    masks[0, :2], masks[1, 4:], masks[3, 0, 0] = True, True, True
    counts = points_per_mask(masks, torch.tensor([0, 0, 0, 1]), batch=2, budget=9)
    assert counts.tolist() == [4, 4, 0, 9]


def test_visual_prompts_need_the_encoder_and_a_token_type_of_their_own() -> None:
    visual = VisualPrompts(_stroke(NEAR)[None], torch.tensor([0]))
    with pytest.raises(ValueError, match="visual_prompts=False"):
        _interface()(_features(1), _prompts(visual))
    interface = _visual_interface()
    with pytest.raises(ValueError, match="not a token type"):
        interface(_features(1), InterfacePrompts(learned={OBJECT: 2}, visual={SPATIAL_Q: visual}))
    with pytest.raises(ValueError, match="image ids"):
        interface(_features(1), _prompts(VisualPrompts(_stroke(NEAR)[None], torch.tensor([1]))))


def test_points_are_drawn_by_the_given_generator_and_bf16_autocast_runs() -> None:
    interface = _visual_interface()
    visual = VisualPrompts(_stroke((slice(0, 40), slice(0, 60)))[None], torch.tensor([0]))  # 2400 pixels
    features = _features(1)
    with torch.no_grad():
        first = interface(features, _prompts(visual, seed=1))
        again = interface(features, _prompts(visual, seed=1))
        other = interface(features, _prompts(visual, seed=2))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = interface(features, _prompts(visual, seed=1))
    assert torch.equal(_spatial(first), _spatial(again))
    assert not torch.equal(_spatial(first), _spatial(other))  # 512 of 2400 pixels: other points
    assert torch.isfinite(_spatial(low).float()).all()


def test_a_prompt_with_nothing_to_read_skips_cross_attention() -> None:
    """An empty stroke's query reads nothing (it does not fall back to reading the whole image)."""
    interface = _visual_interface()
    strokes = torch.stack([_stroke(NEAR), torch.zeros(H, W, dtype=torch.bool)])
    prompts = _prompts(VisualPrompts(strokes, torch.tensor([0, 0])))
    with torch.no_grad():
        out = interface(_features(1), prompts)
        other = interface(_features(1, seed=5), prompts)
    # the empty prompt's query (self-attending only itself) is the same whatever the image
    torch.testing.assert_close(_spatial(out)[0, 1], _spatial(other)[0, 1])
    assert not torch.allclose(_spatial(out)[0, 0], _spatial(other)[0, 0])


LEGEND_T, ENTITY_Q, ENTITY_P = (
    "tokens.interleave.legend",
    "queries.interleave.entity",
    "proposals.interleave.entity",
)
ENTITY_V = "tokens.vision.spatial_"


def _entity_prompts(
    strokes: Tensor, visual: list[bool], tokens: VisualTokens | None = None
) -> InterfacePrompts:
    """Three legend prompts of image 0, entity queries and proposals; prompt k's stroke ``strokes[k]``."""
    legend = _text(3, image=torch.zeros(3, dtype=torch.long))
    legend.stands_for_visual = torch.tensor(visual)
    prompts = InterfacePrompts(
        learned={ENTITY_P: PROPOSALS},
        tokens={LEGEND_T: legend},
        per_prompt={ENTITY_Q: LEGEND_T},
        generator=torch.Generator().manual_seed(3),
    )
    if tokens is None:
        prompts.visual = {ENTITY_V: VisualPrompts(strokes, torch.zeros(3, dtype=torch.long))}
    else:
        prompts.visual_tokens = {ENTITY_V: tokens}
    return prompts


def test_a_visual_entity_reads_its_own_stroke_and_text_entities_no_image() -> None:
    interface = _visual_interface()
    empty = torch.zeros(H, W, dtype=torch.bool)
    strokes = torch.stack([empty, _stroke(NEAR), empty])
    moved = torch.stack([empty, _stroke(FAR), empty])
    with torch.no_grad():
        out = interface(_features(1), _entity_prompts(strokes, [False, True, False]))
        again = interface(_features(1), _entity_prompts(moved, [False, True, False]))
        other_image = interface(_features(1, seed=4), _entity_prompts(strokes, [False, True, False]))
        unflagged = interface(_features(1), _entity_prompts(strokes, [False, False, False]))
    queries = out.last[ENTITY_Q]["embeddings"][0]
    # the visual entity's query follows its stroke (and the image under it)
    assert not torch.allclose(again.last[ENTITY_Q]["embeddings"][0, 1], queries[1])
    assert not torch.allclose(other_image.last[ENTITY_Q]["embeddings"][0, 1], queries[1])
    # the text entities read neither the stroke nor the image
    for changed in (again, other_image):
        torch.testing.assert_close(changed.last[ENTITY_Q]["embeddings"][0, [0, 2]], queries[[0, 2]])
    # a visual entity's legend tokens carry the image query's learned content (FIND's placeholder)
    assert not torch.allclose(unflagged.last[ENTITY_Q]["embeddings"][0, 1], queries[1])
    torch.testing.assert_close(unflagged.last[ENTITY_Q]["embeddings"][0, [0, 2]], queries[[0, 2]])


def test_visual_tokens_encoded_elsewhere_are_read_as_inline_ones() -> None:
    """Tokens encoded on another image's pixel features (a reference), owned by the batch's image."""
    interface = _visual_interface()
    empty = torch.zeros(H, W, dtype=torch.bool)
    strokes = torch.stack([empty, _stroke(NEAR), empty])
    features = _features(1)
    with torch.no_grad():
        inline = interface(features, _entity_prompts(strokes, [False, True, False]))
        pixel = interface.pixel_decoder(features)
        encoded = _encode(
            interface, pixel, VisualPrompts(strokes, torch.zeros(3, dtype=torch.long)), ENTITY_V
        )
        given = interface(features, _entity_prompts(strokes, [False, True, False], tokens=encoded))
        # the same tokens from a reference image (image 1 of another batch), owned by image 0
        reference = interface.pixel_decoder(_features(2, seed=9))
        elsewhere = _encode(
            interface, reference, VisualPrompts(strokes, torch.ones(3, dtype=torch.long)), ENTITY_V
        )
        elsewhere.image = torch.zeros(3, dtype=torch.long)
        from_reference = interface(features, _entity_prompts(strokes, [False, True, False], tokens=elsewhere))
    torch.testing.assert_close(given.last[ENTITY_Q]["embeddings"], inline.last[ENTITY_Q]["embeddings"])
    assert not torch.allclose(
        from_reference.last[ENTITY_Q]["embeddings"][0, 1], inline.last[ENTITY_Q]["embeddings"][0, 1]
    )
    with pytest.raises(ValueError, match=r"both in prompts\.visual and prompts\.visual_tokens"):
        prompts = _entity_prompts(strokes, [False, True, False], tokens=encoded)
        prompts.visual = {ENTITY_V: VisualPrompts(strokes, torch.zeros(3, dtype=torch.long))}
        interface(features, prompts)
