"""The open_clip adapters on tiny randomly initialised custom configs (no downloads)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import open_clip
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from findlit.encoders import STRIDES, EncoderSpec, build_encoder
from findlit.encoders.open_clip import (
    OpenClipTextEncoder,
    OpenClipVisionEncoder,
    load_model_config,
    register_model_config,
)
from findlit.errors import ConfigError

# vocab 49408 is open_clip's tokenizer; the text width (48) differs from embed_dim (32) on purpose
TEXT_CFG = {"context_length": 16, "vocab_size": 49408, "width": 48, "heads": 2, "layers": 2}


def vit_config(patch: int = 16, image_size: int = 64) -> dict[str, Any]:
    vision = {"image_size": image_size, "layers": 2, "width": 64, "head_width": 32, "patch_size": patch}
    return {"embed_dim": 32, "vision_cfg": vision, "text_cfg": TEXT_CFG}


TINY = "findlit-test-vit-p16"
TINY_CONFIG = vit_config()
RESNET = "findlit-test-modified-resnet"
RESNET_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {
        "image_size": 64,
        "layers": [1, 1, 1, 1],
        "width": 8,
        "head_width": 32,
        "patch_size": None,
    },
    "text_cfg": TEXT_CFG,
}
CONVNEXT = "findlit-test-convnext-atto"
CONVNEXT_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {
        "timm_model_name": "convnext_atto",
        "timm_model_pretrained": False,
        "timm_pool": "",
        "timm_proj": "linear",
        "image_size": 64,
    },
    "text_cfg": TEXT_CFG,
}


def vision(seed: int = 0, **options: Any) -> OpenClipVisionEncoder:
    torch.manual_seed(seed)
    encoder = build_encoder("open_clip_vision", **({"model": TINY, "model_config": TINY_CONFIG} | options))
    assert isinstance(encoder, OpenClipVisionEncoder)
    return encoder


def text(seed: int = 0, **options: Any) -> OpenClipTextEncoder:
    torch.manual_seed(seed)
    encoder = build_encoder("open_clip_text", **({"model": TINY, "model_config": TINY_CONFIG} | options))
    assert isinstance(encoder, OpenClipTextEncoder)
    return encoder


def save_clip(path: Path, seed: int, model: str = TINY) -> torch.nn.Module:
    """A whole tiny open_clip model, randomly initialised with ``seed``, saved as a state dict."""
    torch.manual_seed(seed)
    clip = open_clip.create_model(model)
    torch.save(clip.state_dict(), path)
    return clip


def normalised(encoder: OpenClipVisionEncoder, images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(encoder.mean).view(1, 3, 1, 1)
    std = torch.tensor(encoder.std).view(1, 3, 1, 1)
    return (images - mean) / std


def assert_pyramid(
    features: dict[str, torch.Tensor], channels: dict[str, int], shape: tuple[int, ...]
) -> None:
    assert list(features) == list(STRIDES)
    for level, stride in STRIDES.items():
        assert features[level].shape == (shape[0], channels[level], shape[2] // stride, shape[3] // stride)
        assert features[level].dtype == torch.float32 and not features[level].requires_grad


# --- vision: ViT ------------------------------------------------------------------------------


def test_vit_pyramid_shapes_and_strides() -> None:
    encoder = vision()
    assert encoder.channels == dict.fromkeys(STRIDES, 64)
    for shape in [(2, 3, 64, 96), (1, 3, 32, 32), (1, 3, 128, 64)]:
        assert_pyramid(encoder(torch.rand(*shape)), encoder.channels, shape)


def test_vit_tokens_at_native_size_are_open_clips_own() -> None:
    encoder = vision()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = encoder.model.forward_intermediates(
            normalised(encoder, images), indices=1, normalize_intermediates=True, intermediates_only=True
        )["image_intermediates"][0]
    features = encoder(images)
    assert torch.allclose(features["res4"], expected, atol=1e-5)
    # the pyramid around it: 2x2 average for res5, bilinear 2x for res3
    assert torch.allclose(features["res5"], F.avg_pool2d(expected, 2), atol=1e-5)
    upsampled = F.interpolate(expected, scale_factor=2, mode="bilinear", align_corners=False)
    assert torch.allclose(features["res3"], upsampled, atol=1e-5)


def test_vit_position_embedding_is_interpolated_like_open_clip(tmp_path: Path) -> None:
    save_clip(tmp_path / "clip.pt", seed=1)
    encoder = vision(pretrained=str(tmp_path / "clip.pt"))
    # open_clip itself resizes the position embedding when it loads a checkpoint at another size
    resized = open_clip.create_model(TINY, pretrained=str(tmp_path / "clip.pt"), force_image_size=(64, 96))
    images = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        expected = resized.visual.forward_intermediates(
            normalised(encoder, images), indices=1, normalize_intermediates=True, intermediates_only=True
        )["image_intermediates"][0]
    assert torch.allclose(encoder(images)["res4"], expected, atol=1e-5)


def test_vit_input_size_sets_the_native_grid(tmp_path: Path) -> None:
    save_clip(tmp_path / "clip.pt", seed=1)
    native = vision(pretrained=str(tmp_path / "clip.pt"))
    at_96 = vision(pretrained=str(tmp_path / "clip.pt"), input_size=96)
    assert at_96.model.positional_embedding.shape == (1 + 6 * 6, 64)
    assert at_96.spec.options["native_size"] == 96 and native.spec.options["native_size"] == 64
    assert at_96.spec.weights_digest != native.spec.weights_digest
    # at its native size the per-call interpolation is the one open_clip did at load: same features
    images = torch.rand(1, 3, 96, 96)
    assert torch.allclose(at_96(images)["res4"], native(images)["res4"], atol=1e-5)


def test_vit_layers_one_or_four() -> None:
    images = torch.rand(1, 3, 64, 96)
    last = vision()(images)
    first = vision(vit_layers=(0,))(images)
    assert not torch.allclose(first["res4"], last["res4"])
    assert torch.equal(vision(vit_layers=(-1,))(images)["res4"], last["res4"])
    mixed = vision(vit_layers=(0, 0, 1, 1))
    assert mixed.spec.options["vit_layers"] == [0, 0, 1, 1]
    features = mixed(images)
    assert_pyramid(features, mixed.channels, (1, 3, 64, 96))
    assert torch.allclose(features["res2"], first["res2"]) and torch.allclose(features["res4"], last["res4"])
    for bad in [(0, 1), (2,), (-3,)]:
        with pytest.raises(ConfigError, match="vit_layers"):
            vision(vit_layers=bad)


def test_vit_without_final_norm_reads_the_raw_residual_stream() -> None:
    images = torch.rand(1, 3, 64, 64)
    raw = vision(normalize=False)
    with torch.no_grad():
        expected = raw.model.forward_intermediates(
            normalised(raw, images), indices=1, normalize_intermediates=False, intermediates_only=True
        )["image_intermediates"][0]
    assert torch.allclose(raw(images)["res4"], expected, atol=1e-5)
    assert raw.spec.options["normalize"] is False


@pytest.mark.parametrize(("patch", "stride"), [(32, 32), (8, 8), (14, 16)])
def test_other_patch_sizes(patch: int, stride: int) -> None:
    image_size = 64 if 64 % patch == 0 else 56
    name = f"findlit-test-vit-p{patch}"
    encoder = vision(model=name, model_config=vit_config(patch, image_size))
    assert encoder.stride == stride
    for shape in [(2, 3, 64, 96), (1, 3, 128, 32)]:
        assert_pyramid(encoder(torch.rand(*shape)), encoder.channels, shape)


# --- vision: CNN towers -----------------------------------------------------------------------


def test_modified_resnet_stages() -> None:
    encoder = vision(model=RESNET, model_config=RESNET_CONFIG)
    assert encoder.spec.options["tower"] == "modified_resnet"
    assert encoder.channels == {"res2": 32, "res3": 64, "res4": 128, "res5": 256}
    images = torch.rand(2, 3, 64, 96)
    features = encoder(images)
    assert_pyramid(features, encoder.channels, (2, 3, 64, 96))
    with torch.no_grad():
        stages = encoder.model.forward_intermediates(
            normalised(encoder, images), indices=[1, 2, 3, 4], intermediates_only=True
        )["image_intermediates"]
    for level, stage in zip(STRIDES, stages, strict=True):
        assert torch.allclose(features[level], stage, atol=1e-5)
    with pytest.raises(ConfigError, match="vit_layers"):
        vision(model=RESNET, model_config=RESNET_CONFIG, vit_layers=(0,))


def test_timm_convnext_stages() -> None:
    encoder = vision(model=CONVNEXT, model_config=CONVNEXT_CONFIG)
    assert encoder.spec.options["tower"] == "timm:ConvNeXt"
    assert encoder.channels == {"res2": 40, "res3": 80, "res4": 160, "res5": 320}
    assert_pyramid(encoder(torch.rand(1, 3, 64, 96)), encoder.channels, (1, 3, 64, 96))


# --- text -------------------------------------------------------------------------------------


def test_text_shapes_mask_and_projection() -> None:
    encoder = text()
    assert encoder.dim == 32  # the joint embedding size, not the tower width (48)
    embeddings = encoder(["a cat", "a red car parked next to a small house"])
    tokenizer = open_clip.get_tokenizer(TINY)
    lengths = [
        int((ids != 0).sum()) for ids in tokenizer(["a cat", "a red car parked next to a small house"])
    ]
    assert lengths[0] == 4  # <start> a cat <end>
    assert embeddings.tokens.shape == (2, max(lengths), 32)
    assert embeddings.mask.tolist() == [[i < n for i in range(max(lengths))] for n in lengths]
    assert embeddings.sentence.shape == (2, 32)
    assert (embeddings.tokens[0, lengths[0] :] == 0).all()
    assert encoder.spec.input_size == 16


def test_text_sentence_is_encode_text_and_tokens_share_its_projection() -> None:
    encoder = text()
    texts = ["a cat", "two dogs on a sofa"]
    embeddings = encoder(texts)
    clip = encoder.model
    ids = open_clip.get_tokenizer(TINY)(texts)
    with torch.no_grad():
        assert torch.allclose(embeddings.sentence, clip.encode_text(ids), atol=1e-5)
        hidden = clip.ln_final(
            clip.transformer(clip.token_embedding(ids) + clip.positional_embedding, attn_mask=clip.attn_mask)
        )
    projected = hidden @ clip.text_projection
    # the end-of-text token's projected state is the sentence vector (argmax pooling)
    for row, length in enumerate(embeddings.mask.sum(1).tolist()):
        assert torch.allclose(embeddings.tokens[row, :length], projected[row, :length], atol=1e-5)
        assert torch.allclose(embeddings.tokens[row, length - 1], embeddings.sentence[row], atol=1e-5)


def test_text_strings_are_encoded_independently() -> None:
    encoder = text()
    alone = encoder(["a cat"])
    together = encoder(["a much longer sentence about several dogs", "a cat", "x"])
    length = int(alone.mask.sum())
    assert torch.allclose(together.tokens[1, :length], alone.tokens[0, :length], atol=1e-5)
    assert not together.mask[1, length:].any() and (together.tokens[1, length:] == 0).all()
    assert torch.allclose(together.sentence[1], alone.sentence[0], atol=1e-5)


def test_text_truncates_to_the_context_and_keeps_the_end_token() -> None:
    embeddings = text()([" ".join(["word"] * 40), ""])
    assert embeddings.tokens.shape[1] == 16
    assert embeddings.mask[0].all() and embeddings.mask[1].sum() == 2  # <start><end>


def test_text_empty_list() -> None:
    embeddings = text()([])
    assert embeddings.tokens.shape == (0, 0, 32) and embeddings.sentence.shape == (0, 32)


# --- checkpoints, specs, frozen semantics -------------------------------------------------------


def test_checkpoint_file_reproduces_the_in_memory_model(tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt"
    clip = save_clip(path, seed=7)
    images = torch.rand(2, 3, 64, 96)
    in_memory, loaded = vision(seed=7), vision(pretrained=str(path))
    assert torch.equal(loaded.model.conv1.weight, clip.visual.conv1.weight)
    for level in STRIDES:
        assert torch.equal(loaded(images)[level], in_memory(images)[level])
    assert loaded.spec == in_memory.spec
    texts = ["a cat", "a dog"]
    text_in_memory, text_loaded = text(seed=7), text(pretrained=str(path))
    assert torch.equal(text_loaded(texts).sentence, text_in_memory(texts).sentence)
    assert text_loaded.spec == text_in_memory.spec


def test_another_checkpoint_changes_outputs_and_digest(tmp_path: Path) -> None:
    save_clip(tmp_path / "a.pt", seed=1)
    save_clip(tmp_path / "b.pt", seed=2)
    first, second = vision(pretrained=str(tmp_path / "a.pt")), vision(pretrained=str(tmp_path / "b.pt"))
    images = torch.rand(1, 3, 64, 64)
    assert not torch.allclose(first(images)["res4"], second(images)["res4"])
    assert [line.split(":")[0] for line in first.spec.differences(second.spec)] == ["weights_digest"]
    text_a, text_b = text(pretrained=str(tmp_path / "a.pt")), text(pretrained=str(tmp_path / "b.pt"))
    assert not torch.allclose(text_a(["a cat"]).sentence, text_b(["a cat"]).sentence)
    assert text_a.spec.weights_digest != text_b.spec.weights_digest


def test_vision_and_text_digests_cover_their_own_tower_only(tmp_path: Path) -> None:
    clip = save_clip(tmp_path / "a.pt", seed=1)
    with torch.no_grad():
        clip.token_embedding.weight.add_(1.0)  # change the text tower only
    torch.save(clip.state_dict(), tmp_path / "b.pt")
    assert vision(pretrained=str(tmp_path / "a.pt")).spec == vision(pretrained=str(tmp_path / "b.pt")).spec
    assert text(pretrained=str(tmp_path / "a.pt")).spec != text(pretrained=str(tmp_path / "b.pt")).spec


def test_missing_or_corrupt_checkpoint_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent" / "open_clip_model.pt"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        vision(pretrained=str(missing))
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        text(pretrained=str(missing))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match=re.escape(str(corrupt))):
        vision(pretrained=str(corrupt))
    other = tmp_path / "resnet.pt"
    register_model_config(RESNET, load_model_config(RESNET_CONFIG))
    save_clip(other, seed=0, model=RESNET)  # another architecture: the load fails
    with pytest.raises(RuntimeError, match=re.escape(str(other))):
        vision(pretrained=str(other))


def test_frozen_semantics() -> None:
    for encoder in (vision(), text()):
        assert list(encoder.parameters()) == [] and list(encoder.state_dict()) == []
        assert all(not p.requires_grad for p in encoder.frozen_parameters())
        encoder.train()
        assert encoder.training and not any(m.training for m in encoder.model.modules())


def test_specs() -> None:
    spec = vision().spec
    assert spec.kind == "vision" and spec.name == f"open_clip/{TINY}" and spec.input_size is None
    assert spec.options["pyramid"] and spec.options["mean"] == list(open_clip.OPENAI_DATASET_MEAN)
    assert EncoderSpec.from_dict(spec.to_dict()) == spec
    text_spec = text().spec
    assert text_spec.kind == "text" and text_spec.name == f"open_clip/{TINY}"
    assert EncoderSpec.from_dict(text_spec.to_dict()) == text_spec
    assert vision(compute_dtype="bfloat16").spec.dtype == "bfloat16"


def test_bfloat16_is_close_to_float32() -> None:
    images = torch.rand(1, 3, 64, 96)
    full, half = vision()(images)["res4"], vision(compute_dtype="bfloat16")(images)["res4"]
    assert half.dtype == torch.float32 and torch.allclose(full, half, atol=0.1, rtol=0.1)
    sentence = text()(["a cat"]).sentence
    assert torch.allclose(sentence, text(compute_dtype="bfloat16")(["a cat"]).sentence, atol=0.1, rtol=0.1)


# --- model configs ------------------------------------------------------------------------------


def test_model_config_from_a_json_file(tmp_path: Path) -> None:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY_CONFIG))
    from_file, from_dict = vision(model_config=str(path)), vision()
    assert from_file.spec == from_dict.spec
    with pytest.raises(FileNotFoundError, match=re.escape("missing.json")):
        vision(model_config=str(tmp_path / "missing.json"))


def test_model_config_errors() -> None:
    with pytest.raises(ConfigError, match="already exists"):
        vision(model_config=vit_config(patch=32))  # TINY holds another config
    with pytest.raises(ConfigError, match="already exists"):
        vision(model="ViT-B-16", model_config=TINY_CONFIG)  # never silently replace a built-in
    with pytest.raises(ConfigError, match="text_cfg"):
        vision(model="findlit-test-incomplete", model_config={"embed_dim": 8, "vision_cfg": {}})
    with pytest.raises(ConfigError, match="unknown open_clip model"):
        build_encoder("open_clip_vision", model="findlit-test-never-registered")
    with pytest.raises(ConfigError, match=re.escape("encoder.vit_layer")):
        build_encoder("open_clip_vision", model=TINY, vit_layer=(0,))
