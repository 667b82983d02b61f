"""The timm vision encoder: the embedded default's weights, the pyramid contract, freezing, specs."""

from __future__ import annotations

import os
from pathlib import Path

# Before anything imports huggingface_hub: no hub, ever (timm only goes there for pretrained=True).
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from safetensors.torch import save_file
from skimage import data as skimage_data

from findlit.encoders import STRIDES, build_encoder
from findlit.encoders.timm_vision import (
    PACKAGE_WEIGHTS,
    TimmVisionEncoder,
    checkpoint_path,
    image_normalization,
    load_classifier,
)
from findlit.errors import CheckpointError, ConfigError

EGYPTIAN_CAT = 285


@pytest.fixture(scope="module")
def default_encoder() -> TimmVisionEncoder:
    return TimmVisionEncoder()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))


def _chelsea(size: int = 224) -> torch.Tensor:
    """skimage's cat as the original EfficientNet-Lite evaluation saw it: float[1,3,size,size] in 0..1."""
    pixels = torch.from_numpy(skimage_data.chelsea()).permute(2, 0, 1).unsqueeze(0).float() / 255
    return F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False)


def test_default_weights_classify_chelsea_as_egyptian_cat() -> None:
    classifier = load_classifier("tf_efficientnet_lite0", PACKAGE_WEIGHTS)
    mean, std = image_normalization(classifier, PACKAGE_WEIGHTS)
    image = (_chelsea() - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        probabilities = classifier(image).softmax(dim=-1)[0]
    assert int(probabilities.argmax()) == EGYPTIAN_CAT
    assert float(probabilities[EGYPTIAN_CAT]) == pytest.approx(0.789, abs=0.01)


def test_features_equal_the_classifier_stages(default_encoder: TimmVisionEncoder) -> None:
    # the features_only model took the classifier's weights by name: same stage outputs
    classifier = load_classifier("tf_efficientnet_lite0", PACKAGE_WEIGHTS)
    image = _chelsea()
    with torch.no_grad():
        stages = classifier.forward_intermediates(
            default_encoder.normalize(image),
            indices=list(default_encoder.out_indices),
            intermediates_only=True,
        )
    features = default_encoder(image)
    for level, stage in zip(STRIDES, stages, strict=True):
        torch.testing.assert_close(features[level], stage)


def test_pyramid_contract(default_encoder: TimmVisionEncoder, images: torch.Tensor) -> None:
    features = default_encoder(images.clone().requires_grad_(True))
    assert list(features) == ["res2", "res3", "res4", "res5"]
    assert default_encoder.channels == {"res2": 24, "res3": 40, "res4": 112, "res5": 320}
    for level, stride in STRIDES.items():
        assert features[level].shape == (2, default_encoder.channels[level], 64 // stride, 96 // stride)
        assert features[level].dtype == torch.float32
        assert not features[level].requires_grad
        assert torch.isfinite(features[level]).all()


def test_images_must_be_multiples_of_32(default_encoder: TimmVisionEncoder) -> None:
    with pytest.raises(ValueError, match="multiples of 32"):
        default_encoder(torch.rand(1, 3, 64, 80))


def test_weights_are_outside_the_module_tree(default_encoder: TimmVisionEncoder) -> None:
    assert list(default_encoder.parameters()) == []
    assert default_encoder.state_dict() == {}
    frozen = list(default_encoder.frozen_parameters())
    assert frozen
    assert not any(p.requires_grad for p in frozen)


def test_train_keeps_the_model_in_eval(default_encoder: TimmVisionEncoder, images: torch.Tensor) -> None:
    before = default_encoder(images)
    default_encoder.train()
    try:
        assert default_encoder.training
        assert not any(module.training for module in default_encoder.model.modules())
        after = default_encoder(images)
    finally:
        default_encoder.eval()
    # batch norm used its running statistics: the outputs did not change
    for level in STRIDES:
        torch.testing.assert_close(after[level], before[level])


def test_bfloat16_compute_is_close_to_float32(
    default_encoder: TimmVisionEncoder, images: torch.Tensor
) -> None:
    encoder = TimmVisionEncoder(compute_dtype="bfloat16")
    half, full = encoder(images), default_encoder(images)
    assert encoder.spec.dtype == "bfloat16"
    assert encoder.spec.weights_digest == default_encoder.spec.weights_digest
    for level in STRIDES:
        assert half[level].dtype == torch.float32
        error = (half[level] - full[level]).norm() / full[level].norm()
        assert error < 0.1, level


def test_spec_is_stable_across_builds(default_encoder: TimmVisionEncoder) -> None:
    spec = default_encoder.spec
    again = TimmVisionEncoder().spec
    assert spec == again
    assert spec.fingerprint() == again.fingerprint()
    assert spec.kind == "vision"
    assert spec.name == "timm/tf_efficientnet_lite0"
    assert spec.dtype == "float32"
    assert spec.options["out_indices"] == [1, 2, 3, 4]
    assert type(spec).from_dict(spec.to_dict()).to_dict() == spec.to_dict()


def test_input_size_is_recorded() -> None:
    encoder = TimmVisionEncoder("resnet18", weights=None, input_size=256)
    assert encoder.spec.input_size == 256
    with pytest.raises(ConfigError, match="input_size"):
        TimmVisionEncoder("resnet18", weights=None, input_size=100)


def test_random_init_resnet18(images: torch.Tensor) -> None:
    encoder = TimmVisionEncoder("resnet18", weights=None)
    assert encoder.channels == {"res2": 64, "res3": 128, "res4": 256, "res5": 512}
    features = encoder(images)
    for level, stride in STRIDES.items():
        assert features[level].shape == (2, encoder.channels[level], 64 // stride, 96 // stride)
    # ImageNet normalisation from timm's config for models other than the package's
    assert encoder.spec.options["mean"] == pytest.approx([0.485, 0.456, 0.406])
    # the random init is seeded: a second build is the same encoder
    assert TimmVisionEncoder("resnet18", weights=None).spec == encoder.spec


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_checkpoint_loads_and_changes_the_digest(
    tmp_path: Path, images: torch.Tensor, suffix: str
) -> None:
    random_init = TimmVisionEncoder("resnet18", weights=None)
    network = load_classifier("resnet18", None)
    with torch.no_grad():
        network.conv1.weight.mul_(2.0)
    path = tmp_path / f"resnet18{suffix}"
    state = {k: v.contiguous() for k, v in network.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)

    loaded = TimmVisionEncoder("resnet18", weights=str(path))
    assert loaded.spec.weights_digest != random_init.spec.weights_digest
    torch.testing.assert_close(loaded.model.state_dict()["conv1.weight"], network.conv1.weight)
    assert not torch.allclose(loaded(images)["res2"], random_init(images)["res2"])


def test_missing_checkpoint_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.pth"
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pth"):
        TimmVisionEncoder("resnet18", weights=str(path))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "garbage-safetensors"])
def test_corrupt_checkpoint_names_the_file(tmp_path: Path, damage: str) -> None:
    path = tmp_path / ("corrupt.safetensors" if damage.endswith("safetensors") else "corrupt.pth")
    if damage == "truncated":
        whole = checkpoint_path(PACKAGE_WEIGHTS).read_bytes()
        path.write_bytes(whole[: len(whole) // 2])
    else:
        path.write_bytes(b"this is not a checkpoint")
    # one line naming the file (CheckpointError: the findlit command reports it without a traceback)
    with pytest.raises(CheckpointError, match=r"^checkpoint .*corrupt\.(pth|safetensors): "):
        load_classifier("tf_efficientnet_lite0", str(path))


def test_checkpoint_of_another_shape_names_the_file(tmp_path: Path) -> None:
    package_file = checkpoint_path(PACKAGE_WEIGHTS)
    state = torch.load(package_file, map_location="cpu", weights_only=True)

    short = dict(list(state.items())[:-1])
    torch.save(short, tmp_path / "short.pth")
    with pytest.raises(ValueError, match=r"short\.pth.*295 tensors for 296"):
        load_classifier("tf_efficientnet_lite0", str(tmp_path / "short.pth"))

    reshaped = dict(state)
    reshaped["_fc.bias"] = torch.zeros(10)
    torch.save(reshaped, tmp_path / "reshaped.pth")
    with pytest.raises(ValueError, match=r"reshaped\.pth.*_fc\.bias"):
        load_classifier("tf_efficientnet_lite0", str(tmp_path / "reshaped.pth"))

    # the package's file does not fit another architecture either
    with pytest.raises(ValueError, match=r"efficientnet-lite0-57934424\.pth"):
        TimmVisionEncoder("resnet18", weights=PACKAGE_WEIGHTS)


def test_unknown_model_is_named() -> None:
    with pytest.raises(ConfigError, match="tf_efficientnet_lite9"):
        TimmVisionEncoder("tf_efficientnet_lite9", weights=None)


def test_out_indices() -> None:
    encoder = TimmVisionEncoder("resnet18", weights=None, out_indices=(1, 2, 3, 4))
    assert encoder.out_indices == (1, 2, 3, 4)
    with pytest.raises(ConfigError, match="reductions"):
        TimmVisionEncoder("resnet18", weights=None, out_indices=(0, 1, 2, 3))


def test_build_encoder_by_name() -> None:
    encoder = build_encoder("timm", model="resnet18", weights=None)
    assert isinstance(encoder, TimmVisionEncoder)
    with pytest.raises(ConfigError, match=r"encoder\.pretrained"):
        build_encoder("timm", model="resnet18", weights=None, pretrained=True)
