"""Scenarios that test the harness itself: one that passes, one that fails in rank 1, one that hangs."""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.distributed as dist


def passes(rank: int, world_size: int, workdir: Path) -> None:
    total = torch.tensor([float(rank)])
    dist.all_reduce(total)
    assert total.item() == sum(range(world_size))


def fails_in_rank_1(rank: int, world_size: int, workdir: Path) -> None:
    """Rank 1 raises while rank 0 waits in a barrier that rank 1 never reaches."""
    if rank == 1:
        raise RuntimeError("deliberate failure in rank 1")
    dist.barrier()


def hangs(rank: int, world_size: int, workdir: Path) -> None:
    """Rank 0 waits for a message rank 1 never sends; rank 1 sleeps: only the harness's timeout ends it."""
    if rank == 0:
        dist.recv(torch.zeros(1), src=1)
    else:
        time.sleep(3600)


passes_again = passes
