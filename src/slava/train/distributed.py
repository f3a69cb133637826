"""torchrun support: process group from the environment, deterministic sharding, reductions.

Under ``torchrun --nproc_per_node N`` every process reads the same records and
walks the same global permutation; each takes its contiguous slice of every
global micro-batch, so N processes see exactly the examples one process would.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence, TypeVar

import torch
import torch.distributed as dist

from slava.errors import SlavaError

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistInfo:
    """Join the process group when ``WORLD_SIZE`` > 1 (gloo on CPU, nccl on GPU); else one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world <= 1:
        return DistInfo(device=device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo", init_method="env://")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local, device)


def shutdown(info: DistInfo) -> None:
    """Leave the process group."""
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def shard(items: Sequence[T], info: DistInfo) -> list[T]:
    """This process's contiguous slice of a global batch; the batch must split evenly."""
    n = len(items)
    if n % info.world_size:
        raise SlavaError(f"a batch of {n} does not split over {info.world_size} processes; make batch_size a multiple")
    per = n // info.world_size
    return list(items[info.rank * per : (info.rank + 1) * per])


def all_reduce_sum(values: Sequence[float], info: DistInfo) -> list[float]:
    """Sum floats over all processes (float64, so logged sums match one process to rounding)."""
    if not info.distributed:
        return [float(v) for v in values]
    t = torch.tensor(list(values), dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return t.tolist()


def barrier(info: DistInfo) -> None:
    """Wait for every process (no-op alone)."""
    if info.distributed:
        dist.barrier()
