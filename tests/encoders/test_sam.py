"""The SAM adapter on a tiny randomly initialised image encoder (no downloads, no 90M-parameter model)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from segment_anything.utils.transforms import ResizeLongestSide

from findlit.encoders import STRIDES, EncoderSpec, build_encoder
from findlit.encoders.sam import SamVisionEncoder, read_state_dict
from findlit.errors import CheckpointError, ConfigError

TINY: dict[str, Any] = {
    "depth": 2,
    "embed_dim": 32,
    "num_heads": 2,
    "out_chans": 16,
    "window_size": 4,
    "global_attn_indexes": (1,),
}
SIZE = 64


def tiny(seed: int = 0, **options: Any) -> SamVisionEncoder:
    torch.manual_seed(seed)
    options = {"image_size": SIZE, "encoder_options": TINY} | options
    encoder = build_encoder("sam", **options)
    assert isinstance(encoder, SamVisionEncoder)
    return encoder


def sam_around(image_encoder: torch.nn.Module) -> Sam:
    """A whole tiny SAM (image encoder, prompt encoder, mask decoder): the official checkpoint layout."""
    grid = SIZE // 16
    return Sam(
        image_encoder=image_encoder,  # type: ignore[arg-type]
        prompt_encoder=PromptEncoder(
            embed_dim=16, image_embedding_size=(grid, grid), input_image_size=(SIZE, SIZE), mask_in_chans=4
        ),
        mask_decoder=MaskDecoder(
            transformer_dim=16,
            transformer=TwoWayTransformer(depth=1, embedding_dim=16, num_heads=2, mlp_dim=32),
            iou_head_depth=1,
            iou_head_hidden_dim=16,
        ),
    ).eval()


def tiny_sam(seed: int) -> Sam:
    sam = sam_around(tiny(seed).model)
    randomise(sam, seed)
    return sam


def randomise(module: torch.nn.Module, seed: int) -> None:
    # SAM zero-initialises its position tables; random ones make the checkpoint tests meaningful
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)


@pytest.mark.parametrize("shape", [(1, 3, 64, 64), (2, 3, 64, 96), (1, 3, 128, 64), (1, 3, 32, 32)])
def test_pyramid_shapes_and_strides(shape: tuple[int, int, int, int]) -> None:
    encoder = tiny()
    features = encoder(torch.rand(*shape))
    assert list(features) == list(STRIDES)
    for level, stride in STRIDES.items():
        assert features[level].shape == (
            shape[0],
            encoder.channels[level],
            shape[2] // stride,
            shape[3] // stride,
        )
        assert features[level].dtype == torch.float32 and not features[level].requires_grad
    assert encoder.channels == dict.fromkeys(STRIDES, 16)


def test_sides_must_be_multiples_of_32() -> None:
    with pytest.raises(ValueError, match="multiples of 32"):
        tiny()(torch.rand(1, 3, 64, 48))


def test_square_input_at_image_size_is_sams_own_encoder_output() -> None:
    encoder = tiny()
    randomise(encoder.model, 0)
    sam = sam_around(encoder.model)
    images = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = sam.image_encoder(sam.preprocess(images * 255))
    assert torch.allclose(encoder(images)["res4"], expected, atol=1e-5)


def test_non_square_input_is_padded_like_sam_and_cropped_back() -> None:
    encoder = tiny()
    randomise(encoder.model, 1)
    sam = sam_around(encoder.model)
    images = torch.rand(1, 3, SIZE, 32)  # longest side = image_size: SAM pads the width to 64
    with torch.no_grad():
        expected = sam.image_encoder(sam.preprocess(images * 255))[:, :, :4, :2]
    features = encoder(images)
    assert torch.allclose(features["res4"], expected, atol=1e-5)
    # the other levels are the parameter-free pyramid of that map
    assert torch.allclose(features["res5"], torch.nn.functional.avg_pool2d(expected, 2), atol=1e-5)


def test_resize_follows_sams_longest_side_rule() -> None:
    encoder = tiny()
    for height, width in [(64, 96), (96, 64), (128, 64), (32, 32), (64, 224)]:
        assert encoder.canvas_shape(height, width) == ResizeLongestSide.get_preprocess_shape(
            height, width, SIZE
        )


def test_official_checkpoint_layout_reproduces_the_in_memory_encoder(tmp_path: Path) -> None:
    sam = tiny_sam(3)
    path = tmp_path / "sam_tiny.pth"
    torch.save(sam.state_dict(), path)
    assert any(k.startswith("mask_decoder.") for k in torch.load(path))
    loaded = tiny(checkpoint=str(path))
    images = torch.rand(2, 3, 64, 96)
    in_memory = tiny()
    in_memory.model.load_state_dict(sam.image_encoder.state_dict())
    expected = in_memory(images)
    actual = loaded(images)
    for level in STRIDES:
        assert torch.equal(actual[level], expected[level])
    assert loaded.spec == in_memory.spec
    assert loaded.weights_digest() == in_memory.weights_digest()
    # the image encoder alone is accepted too
    alone = tmp_path / "encoder_only.pth"
    torch.save(sam.image_encoder.state_dict(), alone)
    assert tiny(checkpoint=str(alone)).weights_digest() == loaded.weights_digest()


def test_another_checkpoint_changes_outputs_and_digest(tmp_path: Path) -> None:
    paths = []
    for seed in (4, 5):
        sam = tiny_sam(seed)
        paths.append(tmp_path / f"sam_{seed}.pth")
        torch.save(sam.state_dict(), paths[-1])
    first, second = (tiny(checkpoint=str(p)) for p in paths)
    images = torch.rand(1, 3, 64, 64)
    assert not torch.allclose(first(images)["res4"], second(images)["res4"])
    assert first.spec.weights_digest != second.spec.weights_digest
    assert [line.split(":")[0] for line in first.spec.differences(second.spec)] == ["weights_digest"]


def test_missing_corrupt_and_mismatched_checkpoints_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "sam_vit_b.pth"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        tiny(checkpoint=str(missing))
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"this is not a torch file")
    said = f"^SAM checkpoint {re.escape(str(corrupt))}: not a torch.save file"
    with pytest.raises(CheckpointError, match=said):
        tiny(checkpoint=str(corrupt))
    wider = tmp_path / "wider.pth"
    torch.save(tiny(encoder_options=TINY | {"embed_dim": 64}).model.state_dict(), wider)
    with pytest.raises(RuntimeError, match=re.escape(str(wider))):
        tiny(checkpoint=str(wider))
    not_tensors = tmp_path / "not_tensors.pth"
    torch.save({"image_encoder.pos_embed": [1, 2, 3]}, not_tensors)
    with pytest.raises(RuntimeError, match=re.escape(str(not_tensors))):
        read_state_dict(not_tensors)


def test_checkpoint_for_another_canvas_is_resized_at_load(tmp_path: Path) -> None:
    sam = tiny_sam(6)
    path = tmp_path / "sam_64.pth"
    torch.save(sam.state_dict(), path)
    small = tiny(checkpoint=str(path), image_size=32)
    assert small.model.pos_embed is not None and small.model.pos_embed.shape == (1, 2, 2, 32)
    global_block = small.model.blocks[1].attn
    assert global_block.rel_pos_h.shape == (2 * 2 - 1, 16)
    features = small(torch.rand(1, 3, 64, 64))
    assert features["res4"].shape == (1, 16, 4, 4)
    assert small.spec.input_size == 32


def test_frozen_semantics() -> None:
    encoder = tiny()
    assert list(encoder.parameters()) == [] and list(encoder.state_dict()) == []
    assert all(not p.requires_grad for p in encoder.frozen_parameters())
    encoder.train()
    assert encoder.training and not any(m.training for m in encoder.model.modules())
    images = torch.rand(1, 3, 64, 64, requires_grad=True)
    assert not encoder(images)["res2"].requires_grad


def test_spec_names_variant_and_round_trips() -> None:
    spec = tiny().spec
    assert spec.kind == "vision" and spec.name == "sam/vit_b" and spec.input_size == SIZE
    assert spec.options["policy"] == "resize-longest-pad-crop"
    assert EncoderSpec.from_dict(spec.to_dict()) == spec
    assert tiny(variant="vit_l").spec.name == "sam/vit_l"  # the tiny options override the variant's sizes


def test_bfloat16_is_close_to_float32() -> None:
    images = torch.rand(1, 3, 64, 96)
    full = tiny()(images)["res4"]
    half = tiny(compute_dtype="bfloat16")(images)["res4"]
    assert half.dtype == torch.float32
    assert torch.allclose(full, half, atol=0.1, rtol=0.1)


def test_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=re.escape("encoder_options.depht")):
        tiny(encoder_options=TINY | {"depht": 2})
    with pytest.raises(ConfigError, match="img_size"):
        tiny(encoder_options=TINY | {"img_size": 128})
    with pytest.raises(ConfigError, match="global_attn_indexes"):
        tiny(encoder_options=TINY | {"global_attn_indexes": (5,)})
    with pytest.raises(ConfigError, match="image_size"):
        tiny(image_size=48)
    with pytest.raises(ConfigError, match="variant"):
        tiny(variant="vit_x")
    with pytest.raises(ConfigError, match=re.escape("encoder.chekpoint")):
        build_encoder("sam", chekpoint="x.pth")


@pytest.mark.parametrize("variant", ["vit_b", "vit_l", "vit_h"])
def test_variants_match_segment_anything(variant: str) -> None:
    # on the meta device: shapes only, no 90M-600M parameter allocations
    with torch.device("meta"):
        official = sam_model_registry[variant]().image_encoder
        ours = SamVisionEncoder(variant=variant).model
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in official.state_dict().items()
    }
    assert [b.window_size for b in ours.blocks] == [b.window_size for b in official.blocks]
    assert ours.blocks[0].norm1.eps == official.blocks[0].norm1.eps == 1e-6
