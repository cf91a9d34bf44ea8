"""torch.distributed (torchrun) set-up, falling back to one process.

The device is chosen once, by :func:`rada.device.select_device`, and passed down.
Under ``torchrun`` (``WORLD_SIZE > 1``) every process trains on its own batches and the
three views' gradients are averaged by DDP (NCCL on CUDA, gloo on CPU).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job (rank 0 of 1 without torchrun).

    Attributes:
        rank: global rank of this process.
        world_size: number of processes in the job.
        local_rank: rank on this node (``LOCAL_RANK``).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """True when the job has more than one process."""
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """True on rank 0 (the process that logs, validates and writes checkpoints)."""
        return self.rank == 0


def init_distributed(device: torch.device | None = None) -> DistInfo:
    """Join the torchrun job described by the environment, if any (idempotent).

    Args:
        device: this process's device (CUDA: NCCL, otherwise gloo).

    Returns:
        This process's place in the job (rank 0 of 1 without torchrun).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistInfo(rank, world, local)


def barrier(info: DistInfo) -> None:
    """Wait for every rank (nothing without distribution).

    Args:
        info: this process's place in the job.
    """
    if info.enabled and dist.is_initialized():
        dist.barrier()


def all_gather_objects(obj: object, info: DistInfo) -> list:
    """Gather one picklable object from every rank.

    Args:
        obj: this rank's object.
        info: this process's place in the job.

    Returns:
        Every rank's ``obj`` in rank order (a one-element list without distribution).
    """
    if not info.enabled:
        return [obj]
    out: list = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


__all__ = ["DistInfo", "init_distributed", "barrier", "all_gather_objects"]
