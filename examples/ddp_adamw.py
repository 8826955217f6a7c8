"""optimlab's AdamW under DistributedDataParallel, checked against torch.optim.AdamW in the same processes.

    torchrun --standalone --nproc-per-node 2 examples/ddp_adamw.py

Runs on CPUs with the gloo backend (on GPUs, use "nccl" and move the model to `cuda:<LOCAL_RANK>`). Each
rank trains on its own data; DDP averages the gradients, so every rank takes the same step and ends with
the same params. optimlab's optimizer needs no change for that: it only ever sees the averaged gradients.
"""

import gc

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import optimlab.torch


def train(make_optimizer, rank: int, steps: int = 20) -> list[torch.Tensor]:
    torch.manual_seed(0)  # the same initial model in every rank and both runs
    model = DistributedDataParallel(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1)))
    optimizer = make_optimizer(model.parameters())
    data = torch.Generator().manual_seed(rank)  # different data in each rank
    for _ in range(steps):
        inputs = torch.randn(8, 16, generator=data)
        loss = (model(inputs) - inputs.sum(dim=1, keepdim=True)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return [param.detach().clone() for param in model.parameters()]


def main() -> None:
    dist.init_process_group("gloo")  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT
    rank = dist.get_rank()
    ours = train(lambda params: optimlab.torch.AdamW(params, lr=1e-2, weight_decay=0.1), rank)
    theirs = train(lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1), rank)
    difference = max((a - b).abs().max().item() for a, b in zip(ours, theirs, strict=True))
    print(f"rank {rank}: max |optimlab - torch.optim| over the params after 20 steps = {difference:.3g}")
    # Free the DDP modules, which hold the process group, while the interpreter is fully alive: left to
    # interpreter shutdown, gloo's worker threads abort the process (~1 run in 2 with torch.optim alone).
    gc.collect()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
