"""The FIND interface honours a batch's padding mask.

An image zero-padded into a larger frame, beside a larger image, gives the outputs it gives alone.
The interface cannot make the frozen encoder's response independent of the frame (near the padding
border it sees zeros or the neighbouring pixels), so these tests build the padded batch's pyramid by
zero-padding the image's own pyramid, as the feature cache's collate does, and feed the interface
directly.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from findlit.interface.find import FINDInterface, InterfaceOutput, InterfacePrompts, PromptTokens
from findlit.interface.heads import attention_mask_from_logits
from tests.interface.test_find import (
    CHANNELS,
    CLASS_Q,
    CLASS_T,
    DESC_Q,
    DESC_T,
    GROUNDING,
    IMAGE,
    LAYERS,
    OBJECT,
    PROPOSALS,
    STRIDES,
    H,
    W,
    _features,
    _image_pooled_pair,
    _interface,
    _segmentation,
    _text,
)

ALONE = (64, 96)  # the image's own frame (H, W)
FRAME = (128, 160)  # the batch's frame, set by a larger image
SIDES = ("right", "left")  # bottom-right padding (collate) or left padding (flipped cached features)


def _origin(side: str) -> tuple[int, int]:
    """(top, left) of the image in the batch frame; a multiple of 32, so every level's cells nest."""
    return (0, 0) if side == "right" else (0, FRAME[1] - ALONE[1])


def _own_features(seed: int, size: tuple[int, int]) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        level: torch.randn(1, c, size[0] // STRIDES[level], size[1] // STRIDES[level], generator=g)
        for level, c in CHANNELS.items()
    }


def _padded_batch(alone: dict[str, Tensor], side: str) -> tuple[dict[str, Tensor], Tensor]:
    """Image 0 = ``alone`` zero-padded into FRAME at :func:`_origin`; image 1 fills FRAME.

    Returns:
        ``(features {level: float[2,C,FRAME/s]}, padding_mask bool[2,*FRAME])``.

    """
    top, left = _origin(side)
    larger = _own_features(7, FRAME)
    features = {}
    for level, value in alone.items():
        s = STRIDES[level]
        padded = value.new_zeros(1, value.shape[1], FRAME[0] // s, FRAME[1] // s)
        padded[..., top // s : top // s + value.shape[-2], left // s : left // s + value.shape[-1]] = value
        features[level] = torch.cat([padded, larger[level]])
    padding_mask = torch.zeros(2, *FRAME, dtype=torch.bool)
    padding_mask[0] = True
    padding_mask[0, top : top + ALONE[0], left : left + ALONE[1]] = False
    return features, padding_mask


def _prompts(batch: int) -> InterfacePrompts:
    """Segmentation and grounding at once; image 0's description prompts are the same in any batch."""
    mine, other = _text(2, seed=2), _text(3, seed=5)
    descriptions = PromptTokens(mine.tokens, mine.mask, torch.zeros(2, dtype=torch.long))
    if batch == 2:
        descriptions = PromptTokens(
            torch.cat([mine.tokens, other.tokens]),
            torch.cat([mine.mask, other.mask]),
            torch.tensor([0, 0, 1, 1, 1]),
        )
    return InterfacePrompts(
        learned={OBJECT: PROPOSALS, IMAGE: 1, GROUNDING: PROPOSALS},
        tokens={CLASS_T: _text(5), DESC_T: descriptions},
        per_prompt={CLASS_Q: CLASS_T, DESC_Q: DESC_T},
    )


def _region(side: str, stride: int) -> tuple[slice, slice]:
    """The image's own cells on a stride-``stride`` grid of the batch frame."""
    top, left = _origin(side)
    return (
        slice(top // stride, (top + ALONE[0]) // stride),
        slice(left // stride, (left + ALONE[1]) // stride),
    )


def _run_both(interface: FINDInterface, side: str) -> tuple[InterfaceOutput, InterfaceOutput]:
    alone = _own_features(3, ALONE)
    features, padding_mask = _padded_batch(alone, side)
    with torch.no_grad():
        return interface(alone, _prompts(1)), interface(features, _prompts(2), padding_mask)


@pytest.mark.parametrize("side", SIDES)
def test_an_image_gives_the_same_outputs_alone_and_padded_beside_a_larger_image(side: str) -> None:
    interface = _interface(mask_pooling=True, image_pooling=True).eval()
    alone, together = _run_both(interface, side)
    rows, cols = _region(side, 4)
    for a, t in zip(alone.layers, together.layers, strict=True):
        for name in (OBJECT, GROUNDING):
            torch.testing.assert_close(t[name]["mask_logits"][0, :, rows, cols], a[name]["mask_logits"][0])
        for name in (OBJECT, GROUNDING, IMAGE, CLASS_Q, DESC_Q):
            width = a[name]["embeddings"].shape[1]
            torch.testing.assert_close(t[name]["embeddings"][0, :width], a[name]["embeddings"][0])
    # the class logits follow (same embeddings), and the image query is what retrieval compares
    classes = alone.last[CLASS_Q]["embeddings"]
    torch.testing.assert_close(
        together.class_logits(OBJECT, together.last[CLASS_Q]["embeddings"])[:1],
        alone.class_logits(OBJECT, classes),
    )


def test_padding_changes_nothing_of_the_larger_image() -> None:
    """The larger image fills the frame: its outputs are those of a batch without the padded image."""
    interface = _interface(mask_pooling=True, image_pooling=True).eval()
    features, padding_mask = _padded_batch(_own_features(3, ALONE), "right")
    larger = {level: value[1:] for level, value in features.items()}
    prompts = _segmentation()
    with torch.no_grad():
        together = interface(features, prompts, padding_mask)
        alone = interface(larger, prompts)
    for a, t in zip(alone.layers, together.layers, strict=True):
        torch.testing.assert_close(t[OBJECT]["mask_logits"][1:], a[OBJECT]["mask_logits"])
        torch.testing.assert_close(t[IMAGE]["embeddings"][1:], a[IMAGE]["embeddings"])


def test_image_pooling_averages_the_mask_features_over_the_image_s_own_cells() -> None:
    prompts = _segmentation()
    plain, pooled = _image_pooled_pair()
    features, padding_mask = _padded_batch(_own_features(3, ALONE), "left")
    rows, cols = _region("left", 4)
    with torch.no_grad():
        a, b = plain(features, prompts, padding_mask), pooled(features, prompts, padding_mask)
        mask_features = pooled.pixel_decoder(features, padding_mask).mask_features  # [B,C,h,w]
        # image 0: the mean (with the one unit of prior weight) over its own 16 x 24 cells only
        own = mask_features[0, :, rows, cols]
        first = own.sum((-2, -1)) / (own.shape[-2] * own.shape[-1] + 1.0)
        # image 1 fills the frame: the mean over every cell
        second = mask_features[1].sum((-2, -1)) / (mask_features.shape[-2] * mask_features.shape[-1] + 1.0)
        expected = pooled.image_pooling.mlp(torch.stack([first, second]))[:, None]
    for layer in (0, -1):
        torch.testing.assert_close(
            b.layers[layer][IMAGE]["embeddings"], a.layers[layer][IMAGE]["embeddings"] + expected
        )
        assert torch.equal(b.layers[layer][OBJECT]["embeddings"], a.layers[layer][OBJECT]["embeddings"])


def test_without_padding_the_output_is_the_unmasked_one_exactly() -> None:
    """``padding_mask=None`` is the interface as it was; a mask with no padding takes that same path."""
    interface = _interface(mask_pooling=True, image_pooling=True).eval()
    features = _features(2)
    unpadded = torch.zeros(2, H, W, dtype=torch.bool)
    with torch.no_grad():
        outputs = [
            interface(features, _prompts(2)),
            interface(features, _prompts(2), padding_mask=None),
            interface(features, _prompts(2), padding_mask=unpadded),
        ]
    for other in outputs[1:]:
        for a, b in zip(outputs[0].layers, other.layers, strict=True):
            for name, entry in a.items():
                for key, value in entry.items():
                    assert torch.equal(b[name][key], value), (name, key)


def test_cross_attention_never_reads_padding_and_empty_masks_open_to_the_image_only() -> None:
    interface = _interface().eval()
    captured: list[tuple[Tensor, ...]] = []

    def hook(module: torch.nn.Module, args: tuple[Tensor, ...]) -> None:
        captured.append(args)

    for layer in interface.layers:
        layer.cross_attention.register_forward_pre_hook(hook)
    features, padding_mask = _padded_batch(_own_features(3, ALONE), "left")
    with torch.no_grad():
        out = interface(features, _segmentation(), padding_mask)
    compiled = out.compiled
    objects, image = compiled.slices[OBJECT], compiled.slices[IMAGE]
    for i, args in enumerate(captured):
        attend = args[2]
        stride = (32, 16, 8)[i % 3]
        rows, cols = _region("left", stride)
        own = torch.zeros(FRAME[0] // stride, FRAME[1] // stride, dtype=torch.bool)
        own[rows, cols] = True
        hw = own.numel()
        assert not attend[0, :, :hw][:, ~own.flatten()].any()  # nobody reads image 0's padding
        assert attend[0, image, :hw].equal(own.flatten()[None])  # the image query reads all of it
        assert attend[1, image, :hw].all()  # image 1 has no padding
        # a proposal reads inside its previous mask on the image; with none there, the whole image
        previous = attention_mask_from_logits(out.layers[i][OBJECT]["mask_logits"], own.shape)[0]
        previous = previous & own.flatten()
        expected = torch.where(previous.any(-1, keepdim=True), previous, own.flatten())
        assert attend[0, objects, :hw].equal(expected)


def test_feature_mask_opens_a_proposal_whose_mask_lies_only_on_padding_to_the_image() -> None:
    interface = _interface()
    features, padding_mask = _padded_batch(_own_features(3, ALONE), "right")
    with torch.no_grad():
        compiled = interface(features, _segmentation(), padding_mask).compiled
    keys = 8
    valid = torch.tensor([[True] * 5 + [False] * 3, [True] * keys])
    previous = torch.zeros(2, PROPOSALS, keys, dtype=torch.bool)
    previous[0, 0, 6:] = True  # only on padding: empty on the image
    previous[0, 1, 2] = True
    previous[0, 1, 7] = True  # partly on padding
    attend = FINDInterface._feature_mask(compiled, previous, keys, valid)
    assert attend[0, 0].tolist() == valid[0].tolist()
    assert attend[0, 1].tolist() == [False, False, True] + [False] * 5
    assert attend[0, 2].tolist() == valid[0].tolist()  # empty mask: the whole image
    assert attend[1, 0].all()
    assert attend[:, compiled.slices[IMAGE]].equal(valid[:, None])  # the image query: the image
    assert not attend[:, compiled.slices[CLASS_Q]].any()  # class queries read no features


def test_padding_mask_must_match_the_batch() -> None:
    interface = _interface()
    with pytest.raises(ValueError, match="2 images, the features 1"):
        interface(_features(1), _segmentation(), torch.zeros(2, 64, 96, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        interface(_features(1), _segmentation(), torch.zeros(1, 64, 96))


def test_runs_under_bf16_autocast_with_padding() -> None:
    interface = _interface(mask_pooling=True, image_pooling=True)
    features, padding_mask = _padded_batch(_own_features(3, ALONE), "left")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = interface(features, _prompts(2), padding_mask)
    assert len(out.layers) == LAYERS + 1
    for layer in out.layers:
        for entry in layer.values():
            assert torch.isfinite(entry["embeddings"].float()).all()
