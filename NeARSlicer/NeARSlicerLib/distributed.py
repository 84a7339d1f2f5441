"""Data-parallel training under ``torchrun``: one process per GPU (NCCL) or per CPU group (gloo).

``torchrun --nproc-per-node N -m NeARSlicerLib.cli train-prior ...`` starts N copies; each draws its own
batches (rank 0 draws exactly what a single process draws), gradients are averaged by
``DistributedDataParallel``, and only rank 0 validates and writes files. Without torchrun's
environment (``WORLD_SIZE`` unset or 1) everything is a plain single process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .device import pick_device


@dataclass
class Distributed:
    """This process's place in a (possibly single-process) training run."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """Whether this process validates, logs and writes files."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @classmethod
    def from_env(cls, device: str = "auto") -> "Distributed":
        """Join torchrun's process group when its environment says so (NCCL on CUDA, gloo on CPU)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls(0, 1, pick_device(device))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        dev = pick_device(device)
        if dev.type == "cuda":
            dev = torch.device("cuda", local)
            torch.cuda.set_device(dev)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), dev)

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` under DistributedDataParallel when there are several processes."""
        if not self.active:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)

    def agree(self, values: list[float]) -> list[float]:
        """The element-wise maximum of ``values`` over all processes (so that every process takes
        the same learning rate and stops at the same step)."""
        if not self.active:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.tolist()

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()
