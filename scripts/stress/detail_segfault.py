"""TORCH_DISTRIBUTED_DEBUG=DETAIL crashes DistributedDataParallel on gloo (torch 2.14.1, CPU).

    TORCH_DISTRIBUTED_DEBUG=DETAIL .venv/bin/python scripts/stress/detail_segfault.py   # SIGSEGV
    .venv/bin/python scripts/stress/detail_segfault.py                                  # ok

Two processes on gloo: a plain all_reduce passes under DETAIL (its ProcessGroupWrapper checks the
collective's fingerprint), but building ``DistributedDataParallel`` (which checks parameter shapes
across ranks and broadcasts the module's states through the wrapper) ends with SIGSEGV on one rank.
So the stress runs (scripts/stress/run.sh) use ``TORCH_DISTRIBUTED_DEBUG=INFO`` by default, and a
collective mismatch is read from gloo's own error instead of DETAIL's fingerprints.
"""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel


def run(rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    total = torch.tensor([1])
    dist.all_reduce(total)
    print(f"rank {rank}: all_reduce gives {int(total)}", flush=True)
    model = DistributedDataParallel(torch.nn.Linear(4, 2))
    model(torch.randn(3, 4)).sum().backward()
    print(f"rank {rank}: DistributedDataParallel built and stepped", flush=True)
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


if __name__ == "__main__":
    level = os.environ.get("TORCH_DISTRIBUTED_DEBUG", "OFF")
    print(f"torch {torch.__version__}, TORCH_DISTRIBUTED_DEBUG={level}")
    mp.spawn(run, args=(free_port(),), nprocs=2)
