"""FINDModule: construction, optimiser groups, LR schedule, and a tiny fit / validate / reload round trip."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, cast

import lightning as L  # noqa: N812
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from findlit.cli.config import build_datamodule
from findlit.data.collate import Batch
from findlit.data.decode import decode_panoptic
from findlit.data.formats import read_coco_panoptic
from findlit.data.synthetic import generate
from findlit.encoders import EncoderConfig
from findlit.encoders.checkpoint import CHECKPOINT_KEY, EncoderMismatchError
from findlit.errors import ConfigError
from findlit.metrics import SegmentationMetrics
from findlit.tasks.base import Vocabulary
from findlit.training.module import FINDModule, checkpoint_overrides, lr_factor, parameter_groups

VISION = EncoderConfig("timm", {"model": "test_resnet", "weights": None})
INTERFACE = {
    "hidden_dim": 32,
    "num_layers": 2,
    "num_heads": 4,
    "ffn_dim": 64,
    "num_proposals": 8,
    "embed_dim": 16,
}
TASK_OPTIONS = {
    "segmentation": {"num_points": 64},
    "grounding": {"num_points": 64},
    "interleave": {"num_points": 64},
}


def tiny_module(**kwargs: Any) -> FINDModule:
    torch.manual_seed(0)
    options: dict[str, Any] = {
        "vision_encoder": VISION,
        "text_encoder": EncoderConfig("hf_text"),
        "interface": INTERFACE,
        "task_options": TASK_OPTIONS,
    }
    return FINDModule(**(options | kwargs))


def data_section(root: Path) -> dict[str, Any]:
    small = {"image_size": 64}
    fixed = {"image_size": 64, "lsj": False}
    return {
        "root": str(root),
        "num_workers": 0,
        "seed": 0,
        "steps_per_epoch": 4,
        "train": [
            {
                "name": "demo_panoptic",
                "task": "segmentation",
                "format": "coco_panoptic",
                "batch_size": 2,
                "paths": {
                    "panoptic_json": "annotations/panoptic_train.json",
                    "panoptic_root": "panoptic_train",
                    "image_root": "train",
                },
                "transforms": small,
            },
            {
                "name": "demo_captions",
                "task": "retrieval",
                "format": "coco_captions",
                "batch_size": 2,
                "paths": {"captions_json": "annotations/captions_train.json", "image_root": "train"},
                "transforms": fixed,
            },
            {
                "name": "demo_refs",
                "task": "grounding",
                "format": "refcoco",
                "batch_size": 2,
                "paths": {
                    "refs": "annotations/refs(synth).p",
                    "instances_json": "annotations/instances_train.json",
                    "image_root": "train",
                    "split": "train",
                },
                "transforms": fixed,
            },
            {
                "name": "demo_entities",
                "task": "interleave",
                "format": "find_entity",
                "batch_size": 2,
                "paths": {
                    "entity_json": "annotations/entity_train.json",
                    "panoptic_json": "annotations/panoptic_train.json",
                    "panoptic_root": "panoptic_train",
                    "image_root": "train",
                },
                "transforms": fixed,
            },
        ],
        "val": [
            {
                "name": "demo_panoptic",
                "task": "segmentation",
                "format": "coco_panoptic",
                "batch_size": 2,
                "paths": {
                    "panoptic_json": "annotations/panoptic_val.json",
                    "panoptic_root": "panoptic_val",
                    "image_root": "val",
                },
                "transforms": small,
            },
            {
                "name": "demo_captions",
                "task": "retrieval",
                "format": "karpathy",
                "batch_size": 2,
                "paths": {
                    "karpathy_json": "annotations/dataset_coco.json",
                    "image_root": ".",
                    "split": "val",
                },
                "transforms": small,
            },
            {
                "name": "demo_refs",
                "task": "grounding",
                "format": "refcoco",
                "batch_size": 2,
                "paths": {
                    "refs": "annotations/refs_val.json",
                    "instances_json": "annotations/instances_val.json",
                    "image_root": "val",
                    "split": "val",
                },
                "transforms": small,
            },
            {
                "name": "demo_entities",
                "task": "interleave",
                "format": "find_entity",
                "batch_size": 2,
                "paths": {
                    "entity_json": "annotations/entity_val.json",
                    "panoptic_json": "annotations/panoptic_val.json",
                    "panoptic_root": "panoptic_val",
                    "image_root": "val",
                },
                "transforms": small,
            },
        ],
    }


def read_metrics(logger: CSVLogger) -> dict[str, list[float]]:
    values: dict[str, list[float]] = {}
    with open(Path(logger.log_dir) / "metrics.csv") as file:
        for row in csv.DictReader(file):
            for key, value in row.items():
                if value not in ("", None):
                    values.setdefault(key, []).append(float(value))
    return values


def test_lr_factor_warmup_and_steps() -> None:
    factor = lambda step: lr_factor(step, 100, warmup_steps=10, milestones=(0.89, 0.96), gamma=0.1)  # noqa: E731
    assert factor(0) == pytest.approx(0.1)
    assert factor(4) == pytest.approx(0.5)
    assert factor(9) == pytest.approx(1.0)
    assert factor(50) == pytest.approx(1.0)
    assert factor(88) == pytest.approx(1.0)
    assert factor(89) == pytest.approx(0.1)
    assert factor(95) == pytest.approx(0.1)
    assert factor(96) == pytest.approx(0.01)
    assert factor(99) == pytest.approx(0.01)
    assert lr_factor(10**9, math.inf, warmup_steps=0) == 1.0
    assert lr_factor(0, 10, warmup_steps=0) == 1.0


def test_parameter_groups_by_type_and_name() -> None:
    model = torch.nn.ModuleDict(
        {
            "linear": torch.nn.Linear(4, 4),
            "norm": torch.nn.LayerNorm(4),
            "embed": torch.nn.Embedding(3, 4),
            "frozen": torch.nn.Linear(2, 2).requires_grad_(False),
        }
    )
    model.register_parameter("positions", torch.nn.Parameter(torch.zeros(2, 4)))
    decay, no_decay = parameter_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert decay["names"] == ["linear.weight"]
    assert sorted(no_decay["names"]) == [
        "embed.weight",
        "linear.bias",
        "norm.bias",
        "norm.weight",
        "positions",
    ]


def test_the_default_tasks_follow_the_interfaces_visual_prompts() -> None:
    with_visual = tiny_module(interface={**INTERFACE, "visual_prompts": True})
    assert list(with_visual.tasks) == ["segmentation", "grounding", "retrieval", "interleave", "interactive"]
    # listing the interactive task builds the visual-prompt encoder, and the hyperparameters say so
    listed = tiny_module(tasks=["segmentation", "interactive"], task_options={})
    assert listed.interface.visual_prompt_encoder is not None
    assert listed.hparams["interface"]["visual_prompts"] is True


def test_construction_groups_and_hparams() -> None:
    module = tiny_module()
    # without visual prompts, the default leaves out the interactive task; the interleave task's
    # visual entities (FIND's VISUAL_PROB 0.5 by default) build the visual-prompt encoder
    assert list(module.tasks) == ["segmentation", "grounding", "retrieval", "interleave"]
    assert module.interface.visual_prompt_encoder is not None
    assert module.hparams["vision_encoder"] == {
        "name": "timm",
        "options": {"model": "test_resnet", "weights": None},
    }
    # frozen encoders are not in the parameters nor in the state dict
    names = {name for name, _ in module.named_parameters()}
    assert all(name.startswith(("interface.", "tasks.")) for name in names)
    assert not any(key.startswith(("vision_encoder", "text_encoder")) for key in module.state_dict())
    decay, no_decay = parameter_groups(module, 0.05)
    assert set(decay["names"]) | set(no_decay["names"]) == names
    assert not set(decay["names"]) & set(no_decay["names"])
    for name in no_decay["names"]:
        assert name.endswith(("bias", "norm.weight")) or any(
            part in name
            for part in (
                "embeddings",
                "positions",
                "level_embed",
                "logit_scale",
                "no_object",
                "indicator",
                ".1.",
            )
        ), name
    assert "interface.no_object.embedding" in no_decay["names"]
    assert "interface.decoder_norm.weight" in no_decay["names"]
    assert "interface.pixel_decoder.level_embed.weight" in no_decay["names"]
    assert any(name.startswith("interface.embeddings.") for name in no_decay["names"])
    assert all(not name.endswith("bias") for name in decay["names"])
    with pytest.raises(ConfigError, match=r"model\.tasks: unknown task"):
        tiny_module(tasks=["segmentation", "depth"])


def test_fit_validate_checkpoint_round_trip(tmp_path: Path) -> None:
    generate(tmp_path / "data", train=8, val=4, size=64, seed=0)
    datamodule = build_datamodule(data_section(tmp_path / "data"))
    module = tiny_module(warmup_steps=2)
    before = {name: p.detach().clone() for name, p in module.named_parameters()}
    encoder_before = [p.detach().clone() for p in module.vision_encoder.frozen_parameters()]
    logger = CSVLogger(tmp_path / "logs")
    trainer = L.Trainer(
        max_steps=4,
        accelerator="cpu",
        logger=logger,
        limit_val_batches=2,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        log_every_n_steps=1,
        default_root_dir=tmp_path,
        gradient_clip_val=5.0,
    )
    trainer.fit(module, datamodule=datamodule)

    # LR schedule stepped per batch: warmup of 2 steps, both milestones at int(0.89 * 4) = int(0.96 * 4) = 3
    optimizer = trainer.optimizers[0]
    assert [group["weight_decay"] for group in optimizer.param_groups] == [0.05, 0.0]
    assert trainer.lr_scheduler_configs[0].interval == "step"
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 4
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4 * 0.01)
    assert [lr_factor(step, 4, 2) for step in range(4)] == pytest.approx([0.5, 1.0, 1.0, 0.01])

    logged = read_metrics(logger)
    assert "train/loss" in logged
    train_terms = [key for key in logged if key.startswith("train/") and key != "train/loss"]
    assert train_terms and all(len(key.split("/")) == 3 for key in train_terms)
    assert {key.split("/")[1] for key in train_terms} <= {
        "segmentation",
        "grounding",
        "retrieval",
        "interleave",
    }
    for dataset in ("demo_panoptic", "demo_captions", "demo_refs", "demo_entities"):
        assert f"val/{dataset}/loss" in logged, sorted(logged)
    assert "val/demo_panoptic/mIoU" in logged
    assert "val/demo_refs/cIoU" in logged and "val/demo_entities/mIoU" in logged
    assert "val/demo_captions/IR@1" in logged
    # generic segmentation of a panoptic dataset: PQ and mask AP besides mIoU
    for key in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st", "AP", "AP50", "AP75"):
        assert f"val/demo_panoptic/{key}" in logged, sorted(logged)
    # interleave: retrieval recall of the legend queries against the image queries, besides grounding
    for key in ("IR@1", "IR@5", "IR@10", "TR@1", "TR@5", "TR@10"):
        assert f"val/demo_entities/{key}" in logged, sorted(logged)
    assert all(0.0 <= value <= 1.0 for value in logged["val/demo_entities/IR@1"])

    changed = [name for name, p in module.named_parameters() if not torch.equal(p.detach(), before[name])]
    assert changed
    for old, new in zip(encoder_before, module.vision_encoder.frozen_parameters(), strict=True):
        assert torch.equal(old, new)

    # the checkpoint holds specs and vocabularies, no encoder tensors, and loads back
    path = next((tmp_path / "logs").rglob("*.ckpt"))
    checkpoint = torch.load(path, weights_only=True)
    assert set(checkpoint[CHECKPOINT_KEY]) == {"vision_encoder", "text_encoder"}
    assert not any(key.startswith(("vision_encoder", "text_encoder")) for key in checkpoint["state_dict"])
    assert "demo_panoptic" in checkpoint["findlit_vocabularies"]
    loaded = FINDModule.load_from_checkpoint(path, weights_only=True)
    assert loaded.vocabularies["demo_panoptic"] == module.vocabularies["demo_panoptic"]
    for name, parameter in module.named_parameters():
        assert torch.equal(parameter.detach(), loaded.state_dict()[name]), name

    # validate on the loaded module logs the metrics again
    results = L.Trainer(
        accelerator="cpu",
        logger=False,
        limit_val_batches=2,
        enable_progress_bar=False,
        enable_model_summary=False,
    ).validate(loaded, datamodule=datamodule)
    merged = {key: value for result in results for key, value in result.items()}
    assert "val/demo_panoptic/mIoU" in merged and "val/demo_refs/P@0.5" in merged
    assert "val/demo_panoptic/PQ" in merged and "val/demo_panoptic/AP" in merged
    assert "val/demo_entities/IR@1" in merged

    # a checkpoint of another vision encoder is refused
    checkpoint[CHECKPOINT_KEY]["vision_encoder"]["weights_digest"] = "0" * 64
    with pytest.raises(EncoderMismatchError):
        loaded.on_load_checkpoint(checkpoint)


def _padded_coco_batch(coco_sample: Path) -> tuple[Vocabulary, Batch, list[dict[str, Any]]]:
    """The two COCO sample images as one padded segmentation batch, with perfect predictions.

    The second image sits 16 columns right of its frame's left edge (as flipped cached features do),
    so that a target not cropped at the image's origin would not match its predictions.
    """
    data = read_coco_panoptic(
        coco_sample / "annotations" / "panoptic_val2017.json",
        coco_sample / "panoptic_val2017",
        coco_sample / "val2017",
    )
    ids = sorted(data.categories)
    thing_classes = [data.categories[c].isthing for c in ids]
    vocabulary = Vocabulary([data.categories[c].name for c in ids], thing_classes, ids)
    index_of = {c: k for k, c in enumerate(ids)}
    decoded = [decode_panoptic(record) for record in data.records]
    sizes = [(int(d.ignore.shape[0]), int(d.ignore.shape[1])) for d in decoded]
    origins = [(0, 0), (0, 16)]
    frame = (
        max(h for h, _ in sizes),
        max(w + left for (_, w), (_, left) in zip(sizes, origins, strict=True)),
    )
    padding = torch.ones(len(decoded), *frame, dtype=torch.bool)
    targets, predictions = [], []
    for b, (panoptic, (h, w), (top, left)) in enumerate(zip(decoded, sizes, origins, strict=True)):
        window = (slice(top, top + h), slice(left, left + w))
        padding[b][window] = False
        masks = torch.zeros(len(panoptic.masks), *frame, dtype=torch.bool)
        masks[(slice(None), *window)] = panoptic.masks
        ignore = torch.ones(frame, dtype=torch.bool)
        ignore[window] = panoptic.ignore
        labels = torch.tensor([index_of[c] for c in panoptic.category_ids.tolist()])
        is_thing = torch.tensor([thing_classes[k] for k in labels.tolist()])
        targets.append({"masks": masks, "labels": labels, "is_thing": is_thing, "ignore_mask": ignore})
        segment_ids = (panoptic.masks.long() * (torch.arange(len(labels)) + 1)[:, None, None]).sum(0)
        segments = [
            {"id": k + 1, "category": label, "isthing": thing_classes[label], "score": 1.0}
            for k, label in enumerate(labels.tolist())
        ]
        semantic = (panoptic.masks.long() * labels[:, None, None]).sum(0)  # void pixels: any class
        instance = {
            "masks": panoptic.masks[is_thing],
            "labels": labels[is_thing],
            "scores": torch.ones(int(is_thing.sum())),
        }
        predictions.append({"panoptic": (segment_ids, segments), "instance": instance, "semantic": semantic})
    batch = Batch(
        task="segmentation",
        dataset="coco",
        padding_mask=padding,
        image_ids=[record.image.id for record in data.records],
        image_sizes=sizes,
        orig_sizes=sizes,
        targets=targets,
    )
    return vocabulary, batch, predictions


def test_segmentation_metrics_of_a_padded_batch(coco_sample: Path) -> None:
    module = tiny_module(tasks=["segmentation"], task_options={"segmentation": {"num_points": 64}})
    vocabulary, batch, predictions = _padded_coco_batch(coco_sample)
    module.vocabularies["coco"] = vocabulary
    module._build_metrics("val", "coco", "segmentation")  # stuff classes: panoptic
    metrics = cast(SegmentationMetrics, module.metrics[module._metric_keys[("val", "coco")]])
    module._update_metrics(metrics, batch, predictions)  # both images in one batch
    values = metrics.compute()
    for key in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st", "AP", "AP50", "mIoU"):
        assert values[f"val/coco/{key}"].item() == pytest.approx(1.0), key

    # one thing missed in the first image: PQ and AP drop, against the same cropped targets
    metrics.reset()
    segment_ids, segments = predictions[0]["panoptic"]
    first_thing = next(s for s in segments if s["isthing"])
    predictions[0]["panoptic"] = (segment_ids.masked_fill(segment_ids == first_thing["id"], 0), segments)
    instance = predictions[0]["instance"]
    predictions[0]["instance"] = {key: value[1:] for key, value in instance.items()}
    module._update_metrics(metrics, batch, predictions)
    values = metrics.compute()
    assert values["val/coco/PQ_th"].item() < 1.0 and values["val/coco/PQ_st"].item() == pytest.approx(1.0)
    assert values["val/coco/AP"].item() < 1.0

    # an instances dataset (things only, masks may overlap): mask AP and mIoU, no PQ
    things = [k for k, thing in enumerate(vocabulary.thing_classes) if thing]
    module.vocabularies["coco_instances"] = Vocabulary(
        [vocabulary.class_names[k] for k in things],
        [True] * len(things),
        [vocabulary.category_ids[k] for k in things],
    )
    module._build_metrics("val", "coco_instances", "segmentation")
    assert module.metrics[module._metric_keys[("val", "coco_instances")]].include == ("AP", "mIoU")
    module._build_metrics("test", "coco", "segmentation", panoptic=False)  # a dataset's own flag wins
    assert module.metrics[module._metric_keys[("test", "coco")]].include == ("AP", "mIoU")


# -- predict_step ---------------------------------------------------------------------------------

PREDICT_CLASSES = {"classes": ["person", "horse"], "stuff": ["grass", "sky"]}


def tiny_encoder_module(**kwargs: Any) -> FINDModule:
    """An untrained FINDModule over the tiny test encoders (no download, fast on the real photos)."""
    from findlit.encoders.registry import _REGISTRY, register
    from tests.encoders.tiny import TinyText

    if "tiny_test_text" not in _REGISTRY:
        register("tiny_test_text")(TinyText)
    torch.manual_seed(0)
    options: dict[str, Any] = {
        "vision_encoder": EncoderConfig("tiny_test_vision"),
        "text_encoder": EncoderConfig("tiny_test_text", {"dim": 8}),
        "interface": INTERFACE,
        "task_options": TASK_OPTIONS,
    }
    return FINDModule(**(options | kwargs)).eval()


def predict_datamodule(coco_sample: Path, batch_size: int, **fields: Any) -> Any:
    entry = {
        "name": "photos",
        "images": ["val2017"],
        "prompts": ["the man jumping for the ball", "a tree on the left"],
        "image_size": 100,  # the photos' frames differ (128x96, 128x64) unless padded to a square
        "batch_size": batch_size,
    }
    datamodule = build_datamodule(
        {"root": str(coco_sample), "num_workers": 0, "predict": [entry | PREDICT_CLASSES | fields]}
    )
    datamodule.setup("predict")
    return datamodule


@torch.inference_mode()
def predict_all(module: FINDModule, datamodule: Any) -> list[Any]:
    [loader] = datamodule.predict_dataloader()
    return [prediction for i, batch in enumerate(loader) for prediction in module.predict_step(batch, i)]


def test_predict_step_gives_what_the_predictor_gives(coco_sample: Path) -> None:
    from findlit.inference.predictor import Predictor

    module = tiny_encoder_module()
    predictions = predict_all(module, predict_datamodule(coco_sample, batch_size=1))
    predictor = Predictor(module, image_size=100, device="cpu")
    photos = sorted((coco_sample / "val2017").glob("*.jpg"))
    assert [prediction.image for prediction in predictions] == photos
    prompts = ["the man jumping for the ball", "a tree on the left"]
    for photo, prediction in zip(photos, predictions, strict=True):
        expected = predictor.predict(photo, prompts, **PREDICT_CLASSES)
        assert prediction.labels == expected.labels and prediction.sources == expected.sources
        assert prediction.labels[-2:] == prompts
        assert torch.equal(prediction.masks, expected.masks)
        assert prediction.scores == pytest.approx(expected.scores)
        assert torch.equal(prediction.pixels, expected.pixels)
        height, width = prediction.size
        assert prediction.masks.shape == (len(prediction.labels), height, width)
    # the on-the-fly vocabulary stays out of the module
    assert module.vocabularies == {}


def test_predict_step_masks_do_not_depend_on_the_batch_size(coco_sample: Path) -> None:
    module = tiny_encoder_module()
    alone = predict_all(module, predict_datamodule(coco_sample, batch_size=1))
    together = predict_all(module, predict_datamodule(coco_sample, batch_size=2))
    assert len(alone) == len(together) == 2
    for one, two in zip(alone, together, strict=True):
        assert one.image == two.image and one.labels == two.labels
        # each image sits in the same 128x128 frame in both: only float rounding of batched
        # kernels may differ, so a mask may differ by a pixel on a decision boundary at most
        assert one.masks.shape == two.masks.shape
        assert (one.masks != two.masks).float().mean() < 1e-3
        assert two.scores == pytest.approx(one.scores, abs=1e-4)


def test_instance_mode_keeps_detections_above_min_score(coco_sample: Path) -> None:
    module = tiny_encoder_module()
    datamodule = predict_datamodule(coco_sample, batch_size=2, mode="instance", min_score=0.0, stuff=[])
    for prediction in predict_all(module, datamodule):
        classes = [
            label
            for label, source in zip(prediction.labels, prediction.sources, strict=True)
            if source == "class"
        ]
        assert classes and set(classes) <= {"person", "horse"}
    strict = predict_datamodule(coco_sample, batch_size=2, mode="instance", min_score=1.0, stuff=[])
    for prediction in predict_all(module, strict):
        assert prediction.sources == ["prompt", "prompt"]


def test_predict_refuses_requests_the_model_cannot_serve_before_any_image(coco_sample: Path) -> None:
    from findlit.errors import ConfigError

    module = tiny_encoder_module(tasks=["segmentation"], task_options={"segmentation": {"num_points": 64}})
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    datamodule = predict_datamodule(coco_sample, batch_size=2)
    encoder = cast(Any, module.vision_encoder)
    with pytest.raises(
        ConfigError, match=r"data\.predict\[0\]\.prompts: free-text prompts need the grounding task"
    ):
        trainer.predict(module, datamodule=datamodule)
    assert encoder.calls == 0


def test_predict_step_needs_a_prediction_batch(coco_sample: Path) -> None:
    module = tiny_encoder_module()
    batch = cast(Batch, {"task": "segmentation", "dataset": "x"})
    with pytest.raises(ValueError, match=r"data\.predict"):
        module.predict_step(batch, 0)


def test_checkpoint_overrides_only_for_interleave_models_from_before_visual_entities() -> None:
    old = {
        "interface": {"visual_prompts": False},
        "tasks": ["interleave"],
        "task_options": {"interleave": {}},
    }
    assert checkpoint_overrides(old) == {"task_options": {"interleave": {"visual_prompt_p": 0.0}}}
    assert old["task_options"] == {"interleave": {}}  # the hyperparameters are not changed
    for newer in (
        {**old, "interface": {"visual_prompts": True}},  # visual entities recorded with the encoder
        {**old, "task_options": {"interleave": {"visual_prompt_p": 0.25}}},  # the option given
        {**old, "tasks": ["segmentation"]},  # no interleave task
    ):
        assert checkpoint_overrides(newer) == {}
