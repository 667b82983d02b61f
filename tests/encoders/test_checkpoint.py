from pathlib import Path
from typing import Any

import lightning as L  # noqa: N812
import pytest
import torch
from torch import nn

from findlit.encoders.checkpoint import (
    CHECKPOINT_KEY,
    EncoderMismatchError,
    check_encoder_specs,
    record_encoder_specs,
)
from tests.encoders.tiny import CHANNELS, TinyText, TinyVision


class Module(L.LightningModule):
    def __init__(self, vision_seed: int = 0) -> None:
        super().__init__()
        self.vision = TinyVision(seed=vision_seed)
        self.text = TinyText()
        self.head = nn.Linear(CHANNELS["res5"], 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        features = self.vision(torch.rand(2, 3, 32, 32))["res5"].flatten(1)
        return self.head(features).pow(2).mean()

    def train_dataloader(self) -> Any:
        return [0, 1]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        record_encoder_specs(checkpoint, self)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_encoder_specs(checkpoint, self)


def _fit(tmp_path: Path) -> Path:
    trainer = L.Trainer(
        max_steps=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(Module())
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_checkpoint_holds_specs_not_encoder_tensors(tmp_path: Path) -> None:
    checkpoint = torch.load(_fit(tmp_path), weights_only=True)
    assert set(checkpoint["state_dict"]) == {"head.weight", "head.bias"}
    assert set(checkpoint[CHECKPOINT_KEY]) == {"vision", "text"}
    assert checkpoint[CHECKPOINT_KEY]["vision"]["weights_digest"] == TinyVision().weights_digest()


def test_loading_rebuilds_the_encoders_and_checks_them(tmp_path: Path) -> None:
    path = _fit(tmp_path)
    loaded = Module.load_from_checkpoint(path, weights_only=True)
    assert torch.equal(loaded.head.weight, torch.load(path, weights_only=True)["state_dict"]["head.weight"])
    with pytest.raises(EncoderMismatchError, match=r"encoder 'vision' weights_digest"):
        Module.load_from_checkpoint(path, vision_seed=1, weights_only=True)


def test_missing_or_extra_encoders_are_named() -> None:
    checkpoint: dict[str, Any] = {}
    record_encoder_specs(checkpoint, Module())
    del checkpoint[CHECKPOINT_KEY]["text"]
    checkpoint[CHECKPOINT_KEY]["old"] = checkpoint[CHECKPOINT_KEY]["vision"]
    with pytest.raises(EncoderMismatchError) as error:
        check_encoder_specs(checkpoint, Module())
    assert "'old' is in the checkpoint but not in this model" in str(error.value)
    assert "'text' is in this model but not in the checkpoint" in str(error.value)
    with pytest.raises(EncoderMismatchError, match="not written by findlit"):
        check_encoder_specs({}, Module())
