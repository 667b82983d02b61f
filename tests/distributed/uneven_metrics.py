"""Run by test_uneven_shards: two gloo ranks update findlit's metrics on uneven round-robin shards.

Usage: python uneven_metrics.py <rank> <port> <out.json>. Rank 0 also computes every metric in one
process over all the images (dataset order) and writes both results.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import torch
import torch.distributed as dist

from findlit.metrics import RetrievalRecall, grounding_metrics, segmentation_metrics

IMAGES = 5
THINGS, STUFFS = [1, 2], [3]


def image(index: int) -> dict[str, Any]:
    """Random predictions and targets of image ``index`` (the same in every process)."""
    g = torch.Generator().manual_seed(index)
    h = w = 12
    # one segment per category (instance id 1); the prediction is the target with a noisy band
    truth = torch.ones(h, w, 2, dtype=torch.long)
    truth[:, : 4 + index, 0] = 2
    truth[8:, :, 0] = 3
    pan = truth.clone()
    pan[: 2 + index, :, 0] = torch.randint(1, 4, (2 + index, w), generator=g)
    targets = torch.rand(2, h, w, generator=g) > 0.5
    n = index % 3  # 0, 1 or 2 detections: images without any too
    # scores repeat across images, so that the order of the gathered images matters for AP
    scores = torch.tensor([0.5, 0.9])[:n]
    return {
        "panoptic_pred": pan[None],
        "panoptic_target": truth[None],
        "instance_preds": [
            {
                # the first detection is the first target, spoilt a little
                "masks": targets[:n] ^ (torch.rand(n, h, w, generator=g) > 0.9),
                "scores": scores,
                "labels": torch.tensor([0, 1])[:n],
            }
        ],
        "instance_targets": [{"masks": targets, "labels": torch.tensor([0, 1])}],
        "semantic_pred": torch.randint(0, 3, (1, h, w), generator=g),
        "semantic_target": torch.randint(0, 3, (1, h, w), generator=g),
        "embedding": torch.randn(8, generator=g),
        "captions": torch.randn(2, 8, generator=g),
        "grounding": (torch.rand(2, h, w, generator=g) > 0.5, torch.rand(2, h, w, generator=g) > 0.5),
    }


def evaluate(indices: list[int]) -> dict[str, float]:
    segmentation = segmentation_metrics(THINGS, STUFFS, 3)
    recall = RetrievalRecall(top_k=(1, 2))
    grounding = grounding_metrics()
    for index in indices:
        data = image(index)
        segmentation.update(
            **{k: v for k, v in data.items() if k.startswith(("panoptic", "instance", "semantic"))}
        )
        ids = torch.tensor([index])
        recall.update(data["embedding"][None], ids, data["captions"], ids.repeat(2))
        grounding["grounding"].update(*data["grounding"])
    values = {**segmentation.compute(), **recall.compute(), **grounding.compute()}
    return {key: float(value) for key, value in values.items()}


def main(rank: int, port: str, out: str) -> None:
    reference = evaluate(list(range(IMAGES))) if rank == 0 else None
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    sharded = evaluate(list(range(rank, IMAGES, 2)))  # ShardedSampler's shard: 3 and 2 images
    if rank == 0:
        with open(out, "w") as file:
            json.dump({"one": reference, "two": sharded}, file)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3])
