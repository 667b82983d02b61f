"""Two "nodes" of one process each (NODE_RANK 0 and 1 on this machine) train like one process.

Lightning's default LightningEnvironment reads MASTER_ADDR, MASTER_PORT and NODE_RANK; without
LOCAL_RANK it launches the node's processes itself (here one: ``devices: 1``) and takes the world
size from ``num_nodes x devices``. The single process gets the same global batch (each dataset's
batch size doubled): MultiTaskBatchSampler splits a global batch of consecutive stream positions
by rank, so it sees the same samples with the same augmentation seeds.

All four tasks train (the first five steps of seed 0 draw segmentation, retrieval, segmentation,
interleave, grounding). What makes the mask losses equal:

- Random points follow the image, not the rank: every batch carries its samples' seeds
  (``sample_seeds``) and the matcher and mask losses of an image draw from generators seeded by
  (its seed, decoder layer), so two ranks draw exactly what the one process draws.
- Normalisers are averaged over ranks (masks, class weights, matched sentences; see
  :mod:`findlit.losses.mask_losses`), so DDP's average of the rank gradients is the gradient of
  the global batch although the two images of a step have different numbers of targets.
- Every image has the same padded frame in both runs. Collate pads a batch to its largest image,
  and the frozen encoder's features near an image's bottom and right edges depend on how much
  padding follows (its own zero padding vs normalised black pixels), as do the normalised point
  coordinates. Large-scale jitter therefore gives its crops a ``frame`` (its ``image_size``
  square) that collate pads to whatever the batch mates; the segmentation crops here vary in size
  (scales 0.3 to 1.5 of 64 px), many smaller than the frame.

The interface has no dropout (its layers' default 0); dropout would draw per rank from the global
generator and could not be equal either.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from findlit.training.optimization import lr_factor
from tests.distributed.runs import (
    DDP,
    evaluation_metrics,
    findlit_command,
    free_port,
    logged_metrics,
    run_env,
    run_together,
    small_config,
    write_config,
)

STEPS = 5
LOSS_TOLERANCE = 1e-3
"""Relative difference allowed between the validation losses of the two trained models.

Not the 1e-4 of tests/distributed/test_ddp_validation.py, which evaluates the same weights: here the
weights themselves differ by Adam-amplified rounding (the test's comments), and a loss is a sum of
terms over thousands of weights. Measured on this machine (2026-12-06, deterministic: the same every
run): the entity validation loss 6.037189 vs 6.038069, relative 1.46e-4 (the other losses < 1e-4).
What the test exists to catch, measured with the same config: training on another draw of samples
(data.seed 1 instead of 0, every step) moves the validation losses by 2.9e-2 (refs) to 0.59
(captions) relatively; a mistake in one of the 5 steps only should move them by about a tenth of
that, 2.9e-3 at the least. 1e-3 is 7 times the rounding and a third of that smallest mistake."""
TASKS = ("segmentation", "grounding", "retrieval", "interleave")


def varied_crops(config: dict[str, Any]) -> dict[str, Any]:
    """One epoch of STEPS steps (one validation, at the end); segmentation crops of varying size."""
    config["data"]["steps_per_epoch"] = STEPS
    for dataset in config["data"]["train"]:
        if dataset["transforms"].get("lsj", True):
            dataset["transforms"].update(min_scale=0.3, max_scale=1.5)
    return config


def checkpoint(logs: Path) -> dict[str, Any]:
    [path] = logs.rglob("*.ckpt")
    return dict(torch.load(path, weights_only=True))


def adam_ratio_bound(steps: int, beta1: float = 0.9, beta2: float = 0.999) -> float:
    """The largest bias-corrected ``|m| / sqrt(v)`` Adam can reach after ``steps`` steps.

    ``m = sum_k w_k g_k`` and ``v = sum_k u_k g_k ** 2`` with the bias-corrected weights ``w_k``,
    ``u_k`` of step ``k``; Cauchy-Schwarz gives ``|m| <= sqrt(sum_k w_k ** 2 / u_k) * sqrt(v)``.
    """
    w = [(1 - beta1) * beta1 ** (steps - k) / (1 - beta1**steps) for k in range(1, steps + 1)]
    u = [(1 - beta2) * beta2 ** (steps - k) / (1 - beta2**steps) for k in range(1, steps + 1)]
    return math.sqrt(sum(wk * wk / uk for wk, uk in zip(w, u, strict=True)))


def flat(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([state[name].float().flatten() for name in sorted(state)])


@pytest.mark.slow
def test_two_nodes_train_and_validate_like_one_process(tmp_path: Path) -> None:
    trainer = {"max_steps": STEPS, "deterministic": True}
    single, nodes = (
        varied_crops(
            small_config(
                tmp_path / name, val_images=5, val_batch_size=1, train_batch_size=size, overrides=trainer
            )
        )
        for name, size in (("single", 2), ("nodes", 1))
    )
    port = str(free_port())
    commands = [
        findlit_command(
            "fit", "--config", str(write_config(single, tmp_path / "single.yaml", tmp_path / "one"))
        )
    ]
    envs = [run_env()]
    for node in (0, 1):
        config = write_config(nodes, tmp_path / f"node{node}.yaml", tmp_path / f"node{node}")
        commands.append(
            findlit_command(
                "fit",
                *("--config", str(config), "--config", str(DDP)),
                *("--trainer.num_nodes", "2", "--trainer.devices", "1"),
                # configs/trainer/ddp.yaml's find_unused_parameters: false stops at the second
                # step: a retrieval batch leaves the mask heads without gradients
                *("--trainer.strategy.init_args.find_unused_parameters", "true"),
            )
        )
        envs.append(run_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, NODE_RANK=str(node)))
    for code, _, err in run_together(commands, envs, timeout=900):
        assert code == 0, err[-4000:]

    # every task trained, in both runs (rank 0 logs each step's terms)
    for logs in (tmp_path / "one", tmp_path / "node0"):
        columns = logged_metrics(logs)
        for task in TASKS:
            assert any(key.startswith(f"train/{task}/") for key in columns), (logs, task)

    one, two = checkpoint(tmp_path / "one"), checkpoint(tmp_path / "node0")
    assert one["global_step"] == two["global_step"] == STEPS
    states = [one["optimizer_states"][0]["state"], two["optimizer_states"][0]["state"]]
    assert sorted(states[0]) == sorted(states[1])
    # Why the runs differ at all: one process runs a batch of 2 where each node runs a batch of 1
    # (other kernel blockings, another summation order, then DDP's all-reduce), so the first step's
    # gradients differ by float rounding (measured: 2.1e-6 of their norm, the exp_avg of a 1-step
    # run). Adam then divides each gradient element by its own root mean square: where a gradient
    # is rounding noise, the two runs step by up to +-lr each, and the next steps' gradients are
    # taken at slightly different weights (measured exp_avg differences: 4.2e-6 after 2 steps,
    # 1.3e-5 after 3, 1.1e-5 after 5). What this test exists to catch, a sample on the wrong rank,
    # an augmentation or point seed drawn per rank, a normaliser not averaged over ranks, changes
    # a step's gradient by a good fraction of itself (half the batch; a factor of 2). The first
    # step's gradient weighs 0.1 * 0.9 ** 4 / (1 - 0.9 ** 5) = 16 % of exp_avg after 5 steps, so
    # such a mistake in any one step moves exp_avg by a few percent at least. 1e-3 sits a
    # hundredfold above the rounding and tenfold below the smallest of those mistakes.
    for moment in ("exp_avg", "exp_avg_sq"):
        a, b = (torch.cat([s[i][moment].flatten() for i in sorted(s)]) for s in states)
        assert (a - b).norm() <= 1e-3 * a.norm(), (moment, float((a - b).norm() / a.norm()))
    # The weights. Adam's step of an element is lr * m / sqrt(v) (bias-corrected), and by
    # Cauchy-Schwarz |m| / sqrt(v) <= sqrt(sum_k w_k ** 2 / u_k) over the moment weights w_k, u_k of
    # the steps so far: 1 for one step, 1.011 after five (beta1 0.9, beta2 0.999). So no element can
    # differ by more than 2 * 1.011 * (the sum of the steps' learning rates), whatever happened;
    # the bound says that the two runs took the same schedule. The discriminating check is how many
    # elements differ: rounding moves only those whose gradient is rounding noise (measured: 0.018 %
    # by more than 1e-6), a mistake moves nearly all.
    assert set(one["state_dict"]) == set(two["state_dict"])
    difference = (flat(one["state_dict"]) - flat(two["state_dict"])).abs()
    hyper = one["hyper_parameters"]
    schedule = sum(
        hyper["lr"] * lr_factor(step, STEPS, hyper["warmup_steps"], hyper["lr_milestones"], hyper["lr_gamma"])
        for step in range(STEPS)
    )
    assert float(difference.max()) <= 2 * adam_ratio_bound(STEPS) * schedule
    assert float((difference > 1e-6).float().mean()) < 1e-2
    # validation after training: the same metrics, and the same losses (each validation image's
    # points are seeded by its index, whichever rank evaluates it)
    a, b = evaluation_metrics(tmp_path / "one"), evaluation_metrics(tmp_path / "node0")
    assert set(a) == set(b) and a
    for dataset in ("demo_panoptic", "demo_captions", "demo_refs", "demo_entities"):
        assert f"val/{dataset}/loss" in a
    for key, value in a.items():
        if key.endswith("/loss"):
            assert math.isclose(b[key], value, rel_tol=LOSS_TOLERANCE), (key, value, b[key])
        else:
            # the weights differ by Adam-amplified rounding (above), which may move a mask by a pixel
            # or two: 1e-4 of a cIoU is a few pixels of these 64 px images
            assert b[key] == pytest.approx(value, abs=1e-4), (key, value, b[key])
