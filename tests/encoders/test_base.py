import pytest
import torch
from torch import nn

from findlit.encoders.base import STRIDES
from findlit.encoders.spec import EncoderSpec, weights_digest
from tests.encoders.tiny import CHANNELS, TinyText, TinyVision


class Interface(nn.Module):
    """A trainable head on frozen encoders, standing in for the FIND interface."""

    def __init__(self) -> None:
        super().__init__()
        self.vision = TinyVision()
        self.text = TinyText()
        self.head = nn.Conv2d(CHANNELS["res4"], 6, 1)

    def forward(self, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        features = self.head(self.vision(images)["res4"]).mean((2, 3))  # [B, 6]
        return features @ self.text(texts).sentence.T  # [B, T]


def test_an_optimiser_step_leaves_encoders_untouched() -> None:
    model = Interface()
    before = {n: p.clone() for n, p in model.vision.model.named_parameters()}
    running_mean = model.vision.model["stem"][1].running_mean.clone()
    optimiser = torch.optim.SGD(model.parameters(), lr=1.0)
    model.train()
    loss = model(torch.rand(2, 3, 64, 64), ["a cat", "a dog"]).logsumexp(1).mean()
    loss.backward()
    optimiser.step()
    assert all(p.grad is not None for p in model.head.parameters())
    for name, parameter in model.vision.model.named_parameters():
        assert parameter.grad is None and not parameter.requires_grad
        assert torch.equal(parameter, before[name]), name
    # batch norm statistics did not move either: the encoder ran in eval mode during training
    assert torch.equal(model.vision.model["stem"][1].running_mean, running_mean)


def test_encoders_are_outside_parameters_and_state_dict() -> None:
    model = Interface()
    names = [name for name, _ in model.named_parameters()]
    assert names == ["head.weight", "head.bias"]
    assert set(model.state_dict()) == {"head.weight", "head.bias"}
    assert list(model.vision.frozen_parameters())


def test_train_mode_never_reaches_the_encoders() -> None:
    model = Interface().train()
    assert model.training and model.head.training
    assert not model.vision.model.training
    assert not any(m.training for m in model.vision.model.modules())
    # dropout is off: the same input gives the same features
    images = torch.rand(1, 3, 32, 32)
    assert torch.equal(model.vision(images)["res2"], model.vision(images)["res2"])


def test_device_and_dtype_moves_reach_the_encoders() -> None:
    model = Interface().to(torch.float64)
    assert all(p.dtype == torch.float64 for p in model.vision.frozen_parameters())


def test_vision_outputs_follow_the_contract() -> None:
    features = TinyVision()(torch.rand(2, 3, 64, 96))
    assert list(features) == list(STRIDES)
    for level, stride in STRIDES.items():
        assert features[level].shape == (2, CHANNELS[level], 64 // stride, 96 // stride)
        assert features[level].dtype == torch.float32 and not features[level].requires_grad
    with pytest.raises(ValueError, match="multiples of 32"):
        TinyVision()(torch.rand(1, 3, 40, 64))


def test_bfloat16_compute_returns_float32_close_to_float32() -> None:
    images = torch.rand(1, 3, 64, 64)
    full = TinyVision(compute_dtype="float32")(images)["res5"]
    half = TinyVision(compute_dtype="bfloat16")(images)["res5"]
    assert half.dtype == torch.float32
    assert torch.allclose(full, half, atol=0.05, rtol=0.05)


def test_text_padding_is_masked_and_zeroed() -> None:
    embeddings = TinyText()(["a", "abcd"])
    assert embeddings.tokens.shape == (2, 4, 6)
    assert embeddings.mask.tolist() == [[True, False, False, False], [True] * 4]
    assert (embeddings.tokens[0, 1:] == 0).all()
    with pytest.raises(TypeError):
        TinyText()("one string")


def test_spec_round_trip_and_digest() -> None:
    spec = TinyVision().spec
    assert EncoderSpec.from_dict(spec.to_dict()) == spec
    assert spec.fingerprint() == TinyVision().spec.fingerprint()
    other = TinyVision(seed=1).spec
    assert other.weights_digest != spec.weights_digest
    assert [line.split(":")[0] for line in spec.differences(other)] == ["weights_digest"]
    assert weights_digest(nn.Linear(2, 2).to(torch.bfloat16))  # bf16 weights hash too


def test_compute_dtype_is_checked() -> None:
    with pytest.raises(ValueError, match="compute_dtype"):
        TinyVision(compute_dtype="int8")
