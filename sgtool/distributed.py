"""Several processes, one job: what `sgtool train`, `mask-eval` and `attack` need from
torch.distributed, which does the work (torchrun starts the processes; nothing here manages them).

Run `torchrun --nproc-per-node N -m sgtool train ...` (or `sgtool train --nproc N`, which runs
torchrun for you). Every process reads RANK and WORLD_SIZE from torchrun's environment and joins
one process group: gloo on CPUs, NCCL on GPUs.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def env_world_size() -> int:
    """The world size torchrun set for this process (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init(device_type: str = "cpu") -> tuple[int, int]:
    """(rank, world size), joining torchrun's process group on first use."""
    if env_world_size() > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    if rank_world()[1] > 1:
        dist.barrier()


def local_device(name: torch.device) -> torch.device:
    """On CUDA, each process takes the GPU torchrun's LOCAL_RANK names."""
    if name.type == "cuda" and rank_world()[1] > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return name


def join(device: torch.device) -> tuple[torch.device, bool]:
    """For an evaluation on `device`: join torchrun's group if there is one, and return this
    process's device and whether it leads (process 0 writes the results)."""
    rank, _ = init(device.type)
    return local_device(device), rank == 0


def average_gradients(params, weight: float) -> None:
    """Sum over the processes of each parameter's gradient times `weight` (this process's share
    of the global batch): the gradient of the global batch's mean loss. An explicit all-reduce
    after backward() also covers SGT's extra passes and its autograd.grad, which DDP's hooks
    would not see in order."""
    if rank_world()[1] == 1:
        return
    for p in params:
        if p.grad is not None:
            p.grad.mul_(weight)
            dist.all_reduce(p.grad)


def all_sum(t: torch.Tensor) -> torch.Tensor:
    if rank_world()[1] > 1:
        dist.all_reduce(t)
    return t


def gather(local: dict) -> dict:
    """Every process's {key: value} merged, on every process (keys are distinct per process)."""
    rank, world = rank_world()
    if world == 1:
        return local
    parts = [None] * world
    dist.all_gather_object(parts, local)
    out = {}
    for p in parts:
        out.update(p)
    return out


def mine(items: list) -> list:
    """This process's share of a list of work items: every world-th item, from its rank."""
    rank, world = rank_world()
    return items[rank::world]
