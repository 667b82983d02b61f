"""Time of one training step of each task of the demo, data loading apart (this machine, 2 cores).

    .venv/bin/python scripts/bench/demo_task_steps.py [--steps 100] [--root data/demo]

Builds the model and the training data of ``configs/demo.yaml`` (``make demo`` generates
``data/demo``), draws ``--steps`` batches in the sampler's order in this process (no data workers,
so the loading time is measured apart), and runs each batch's forward, loss, backward and an AdamW
step. Prints, per task, the number of batches and the median loading and step times.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch

from findlit.cli.train import FindLightningCLI
from findlit.tasks.base import Vocabulary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--root", default="data/demo")
    args = parser.parse_args()
    cli = FindLightningCLI(
        args=["--config", "configs/demo.yaml", "--data.root", args.root, "--data.num_workers", "0",
              "--trainer.logger", "false"],
        run=False,
    )  # fmt: skip
    model, datamodule = cli.model, cli.datamodule
    datamodule.setup("fit")
    for dataset in datamodule.stage_datasets("train"):
        model.vocabularies[dataset.name] = Vocabulary(
            list(getattr(dataset, "class_names", [])),
            list(getattr(dataset, "thing_classes", [])),
            list(getattr(dataset, "category_ids", [])),
        )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loading: dict[str, list[float]] = defaultdict(list)
    stepping: dict[str, list[float]] = defaultdict(list)
    batches = iter(datamodule.train_dataloader())
    model.train()
    for _ in range(args.steps):
        start = time.perf_counter()
        batch = next(batches)
        loaded = time.perf_counter()
        loss, _ = model.task(batch).losses(model(batch), batch, model.context)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loading[batch["task"]].append(loaded - start)
        stepping[batch["task"]].append(time.perf_counter() - loaded)
    for task, times in stepping.items():
        print(
            f"{task:14s} batches {len(times):3d}  loading {statistics.median(loading[task]):.3f} s  "
            f"step {statistics.median(times):.3f} s"
        )


if __name__ == "__main__":
    main()
