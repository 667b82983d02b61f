"""Run by test_datamodule_ddp: a 2-process CPU DDP fit that records each rank's batches.

Usage: python ddp_recorder.py <coco_sample> <out_dir>
"""

import json
import sys
from pathlib import Path
from typing import Any

import lightning as L  # noqa: N812
import torch

from findlit.cli.config import build_datamodule

ANN = "annotations/"


class Recorder(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[Any] = []

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        self.seen.append([batch["task"], batch["dataset"], batch["image_ids"]])
        return (self.weight - 1.0) ** 2

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def main(sample: str, out: str) -> None:
    small = {"image_size": 64}
    train = [
        {
            "name": "pan",
            "task": "segmentation",
            "format": "coco_panoptic",
            "batch_size": 1,
            "ratio": 1.0,
            "transforms": small,
            "paths": {
                "panoptic_json": ANN + "panoptic_val2017.json",
                "panoptic_root": "panoptic_val2017",
                "image_root": "val2017",
            },
        },
        {
            "name": "cap",
            "task": "retrieval",
            "format": "coco_captions",
            "batch_size": 1,
            "ratio": 1.0,
            "transforms": small,
            "paths": {"captions_json": ANN + "captions_val2017.json", "image_root": "val2017"},
        },
    ]
    datamodule = build_datamodule({"root": sample, "train": train, "num_workers": 0, "steps_per_epoch": 6})
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        use_distributed_sampler=False,
        max_steps=12,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out,
    )
    model = Recorder()
    trainer.fit(model, datamodule=datamodule)
    Path(out, f"rank{trainer.global_rank}.json").write_text(json.dumps(model.seen))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
