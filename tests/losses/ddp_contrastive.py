"""Run by test_contrastive: 2 CPU processes (gloo) compute InfoNCE gradients with gathered negatives.

Each rank takes its half of a 2b batch through a tiny projection wrapped in DDP (which averages the
gradients over ranks) and rank 0 saves the gradients. It also saves, averaged over ranks the same
way, the gradients with CAPTIONS texts per image and those of the naive gather (all_gather of
detached features with the local chunk put back).

Usage: python ddp_contrastive.py <out_file> <port>
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from torch import nn

from findlit.losses.contrastive import symmetric_infonce

WORLD = 2
LOCAL_BATCH = 3
CAPTIONS = 2


class Projection(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Linear(6, 4)
        self.text = nn.Linear(5, 4)
        self.log_scale = nn.Parameter(torch.tensor(1.5))

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.image(image), self.text(text), self.log_scale.exp()


def build() -> tuple[Projection, torch.Tensor, torch.Tensor]:
    """The same model and global batch [WORLD * LOCAL_BATCH] in every process."""
    torch.manual_seed(0)
    model = Projection()
    return model, torch.randn(WORLD * LOCAL_BATCH, 6), torch.randn(WORLD * LOCAL_BATCH, 5)


def captions() -> torch.Tensor:
    """float[WORLD * LOCAL_BATCH, CAPTIONS, 5]: the texts of the multi-caption case."""
    return torch.randn(WORLD * LOCAL_BATCH, CAPTIONS, 5, generator=torch.Generator().manual_seed(1))


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


def _naive_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, rank: int) -> torch.Tensor:
    image, text = nn.functional.normalize(image, dim=-1), nn.functional.normalize(text, dim=-1)

    def gather(x: torch.Tensor) -> torch.Tensor:
        chunks = [torch.empty_like(x) for _ in range(WORLD)]
        dist.all_gather(chunks, x.detach())
        chunks[rank] = x
        return torch.cat(chunks)

    labels = torch.arange(image.shape[0]) + rank * image.shape[0]
    ce = nn.functional.cross_entropy
    return (ce(scale * image @ gather(text).T, labels) + ce(scale * text @ gather(image).T, labels)) / 2


def averaged_over_ranks(gradients: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What DDP does to each rank's gradients: their mean over ranks (in place)."""
    for g in gradients.values():
        dist.all_reduce(g)
        g /= WORLD
    return gradients


def worker(rank: int, port: int, out: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model, image, text = build()
        local = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        ddp = nn.parallel.DistributedDataParallel(model)
        img, txt, scale = ddp(image[local], text[local])
        loss = symmetric_infonce(img, txt, scale)
        loss.backward()
        correct = grads(model)

        # the same model without a second DDP (two DDP instances in one process group made rank 1
        # abort now and then under load), its gradients averaged over ranks as DDP averages them
        multi_model, _, _ = build()
        img, txt, scale = multi_model(image[local], captions()[local])
        symmetric_infonce(img, txt, scale).backward()
        multi = averaged_over_ranks(grads(multi_model))

        naive_model, _, _ = build()
        img, txt, scale = naive_model(image[local], text[local])
        _naive_loss(img, txt, scale, rank).backward()
        naive = averaged_over_ranks(grads(naive_model))

        losses = [torch.zeros(()) for _ in range(WORLD)]
        dist.all_gather(losses, loss.detach())
        if rank == 0:
            torch.save(
                {"correct": correct, "multi": multi, "naive": naive, "mean_loss": torch.stack(losses).mean()},
                out,
            )
    finally:
        dist.destroy_process_group()
    _exit_without_finalizing()


def _exit_without_finalizing() -> None:
    """End this rank's process now that its results are saved, skipping interpreter finalization.

    Why: gloo's worker thread drops its reference to a finished collective (and so to the Python
    tensors it holds) a moment after ``wait()`` returns, and DistributedDataParallel keeps the
    gloo process group and its threads alive after ``destroy_process_group`` (torch 2.14.1:
    5 threads left after ``del ddp``, ``gc.collect()`` and destroy; 1 without DDP). If that drop
    lands while Python finalizes, the thread's GIL request calls ``pthread_exit`` inside a
    ``noexcept`` destructor and the rank dies of SIGABRT, "terminate called without an active
    exception" (gdb: ``~AsyncAllgatherWork`` -> ``decref_pyobject`` -> ``take_gil`` ->
    ``PyThread_exit_thread``, main thread in ``Py_FinalizeEx``): 2 of 40 runs before, 0 of 40 after.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    torch.multiprocessing.spawn(worker, args=(int(sys.argv[2]), sys.argv[1]), nprocs=WORLD)
