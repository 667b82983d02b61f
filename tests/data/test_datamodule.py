import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L  # noqa: N812
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from findlit.cli.config import build_datamodule
from findlit.data.datamodule import MultiTaskDataModule
from findlit.errors import ConfigError

ANN = "annotations/"
SMALL = {"image_size": 128}


def dataset(
    name: str, task: str, fmt: str, ratio: float = 1.0, batch_size: int = 2, **paths: str
) -> dict[str, Any]:
    return {
        "name": name,
        "task": task,
        "format": fmt,
        "paths": paths,
        "ratio": ratio,
        "batch_size": batch_size,
        "transforms": SMALL,
    }


def all_tasks(ratio: float = 1.0) -> list[dict[str, Any]]:
    return [
        dataset(
            "pan",
            "segmentation",
            "coco_panoptic",
            ratio=2 * ratio,
            panoptic_json=ANN + "panoptic_val2017.json",
            panoptic_root="panoptic_val2017",
            image_root="val2017",
        ),
        dataset(
            "cap",
            "retrieval",
            "coco_captions",
            captions_json=ANN + "captions_val2017.json",
            image_root="val2017",
        ),
        dataset(
            "ref",
            "grounding",
            "refcoco",
            batch_size=1,
            refs=ANN + "refs(umd).p",
            instances_json=ANN + "panoptic_detection_format_val2017.json",
            image_root="val2017",
        ),
        dataset(
            "ent",
            "interleave",
            "find_entity",
            entity_json=ANN + "entity_val2017.json",
            panoptic_json=ANN + "panoptic_val2017.json",
            panoptic_root="panoptic_val2017",
            image_root="val2017",
        ),
    ]


def make(root: Path, **kwargs: Any) -> MultiTaskDataModule:
    data = {
        "root": str(root),
        "train": all_tasks(),
        "val": all_tasks(),
        "num_workers": 0,
        "steps_per_epoch": 8,
    }
    data.update(kwargs)
    return build_datamodule(data)


def test_train_loader_interleaves_task_homogeneous_batches(coco_sample: Path) -> None:
    datamodule = make(coco_sample)
    datamodule.setup("fit")
    batches = list(datamodule.train_dataloader())
    assert len(batches) == 8
    for batch in batches:
        # large-scale jitter crops to at most 128; collate pads to a multiple of 32
        assert batch["images"].dtype == torch.uint8 and batch["images"].shape[1] == 3
        assert all(side <= 128 and side % 32 == 0 for side in batch["images"].shape[2:])
        assert (
            len(batch["targets"])
            == batch["images"].shape[0]
            == {"pan": 2, "cap": 2, "ref": 1, "ent": 2}[batch["dataset"]]
        )
    assert len({batch["task"] for batch in batches}) > 1


def test_batches_carry_the_seeds_of_their_samples(coco_sample: Path) -> None:
    datamodule = make(coco_sample)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    keys = list(loader.batch_sampler)  # type: ignore[arg-type]
    batches = list(loader)
    assert len(keys) == len(batches) == 8
    for key, batch in zip(keys, batches, strict=True):
        assert batch["sample_seeds"] == [seed for _, _, seed in key]
    assert len({seed for batch in batches for seed in batch["sample_seeds"]}) > 8
    # evaluation samples are seeded by their record index: the same points at every validation
    for loader in datamodule.val_dataloader():
        assert [seed for batch in loader for seed in batch["sample_seeds"]] == [0, 1]


def test_eval_loaders_one_per_dataset_in_order(coco_sample: Path) -> None:
    datamodule = make(coco_sample)
    datamodule.setup("validate")
    loaders = datamodule.val_dataloader()
    assert datamodule.names("val") == ["pan", "cap", "ref", "ent"]
    for loader, name in zip(loaders, datamodule.names("val"), strict=True):
        batches = list(loader)
        assert {b["dataset"] for b in batches} == {name}
        assert sum(len(b["image_ids"]) for b in batches) == 2


def test_unknown_key_and_duplicate_names_are_config_errors(coco_sample: Path) -> None:
    with pytest.raises(ConfigError, match="trian"):
        build_datamodule({"trian": []})
    with pytest.raises(ConfigError, match="repeated"):
        make(coco_sample, val=all_tasks() + all_tasks()[:1])


class _Recorder(L.LightningModule):
    """Records which images each training step saw; learns a scalar so checkpoints have weights."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[tuple[str, tuple[int, ...], int]] = []

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        self.seen.append((batch["dataset"], tuple(batch["image_ids"]), int(batch["images"].float().sum())))
        return (self.weight - 1.0) ** 2

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainer(tmp_path: Path, max_steps: int, checkpoint_every: int | None = None) -> L.Trainer:
    callbacks = []
    if checkpoint_every is not None:
        callbacks.append(
            ModelCheckpoint(
                dirpath=tmp_path, every_n_train_steps=checkpoint_every, save_top_k=-1, filename="{step}"
            )
        )
    return L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=bool(callbacks),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )


@pytest.mark.slow
def test_resumed_fit_sees_exactly_the_batches_it_would_have_seen(coco_sample: Path, tmp_path: Path) -> None:
    # 5 steps per epoch and 12 in all: the run crosses two epoch boundaries; the checkpoint at
    # step 7 falls inside the second epoch.
    uninterrupted = _Recorder()
    _trainer(tmp_path, 12, checkpoint_every=7).fit(
        uninterrupted, datamodule=make(coco_sample, steps_per_epoch=5)
    )
    checkpoint = tmp_path / "step=7.ckpt"
    state = torch.load(checkpoint, weights_only=True)
    assert state["MultiTaskDataModule"] == {"seed": 0, "epoch": 1, "step": 2}

    resumed = _Recorder()
    _trainer(tmp_path / "resumed", 12).fit(
        resumed, datamodule=make(coco_sample, steps_per_epoch=5), ckpt_path=checkpoint
    )
    assert len(uninterrupted.seen) == 12
    assert uninterrupted.seen[:7] + resumed.seen == uninterrupted.seen


@pytest.mark.slow
def test_ddp_ranks_share_the_task_and_split_the_samples(coco_sample: Path, tmp_path: Path) -> None:
    script = Path(__file__).with_name("ddp_recorder.py")
    result = subprocess.run(
        [sys.executable, str(script), str(coco_sample), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 12
    for step, (a, b) in enumerate(zip(*ranks, strict=True)):
        assert a[:2] == b[:2], f"ranks ran different tasks at step {step}"
        # one image each out of the sample's two: every global batch covers both, no overlap
        assert sorted(a[2] + b[2]) == [142238, 439180]
    assert len({step[1] for step in ranks[0]}) == 2


def test_ddp_with_lightning_distributed_sampler_is_a_config_error(coco_sample: Path) -> None:
    datamodule = make(coco_sample)

    class _Trainer:
        world_size = 2

        class _accelerator_connector:  # noqa: N801
            use_distributed_sampler = True

    datamodule.trainer = _Trainer()  # type: ignore[assignment]
    with pytest.raises(ConfigError, match="use_distributed_sampler"):
        datamodule.setup("fit")
