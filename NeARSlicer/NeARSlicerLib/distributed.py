"""Data-parallel training under ``torchrun``: one process per GPU (NCCL) or per CPU group (gloo).

``torchrun --nproc-per-node N -m NeARSlicerLib.cli train-prior ...`` starts N copies; each draws its own
batches (rank 0 draws exactly what a single process draws), gradients are averaged by
``DistributedDataParallel``, and only rank 0 validates and writes files. Without torchrun's
environment (``WORLD_SIZE`` unset or 1) everything is a plain single process.

Study mode (``study.py``) shares this class but not DDP: its per-case latent codes live outside the
module and one step runs several backward passes, so it adds up the gradients itself
(:meth:`Distributed.sum_gradients`).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as dist

from .device import pick_device
from .errors import InputError

# what torchrun sets for every process; a WORLD_SIZE without the rest is a misconfigured launch
TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launch_rank() -> tuple[int, int]:
    """(rank, world size) that torchrun's environment announces, before any process group exists
    ((0, 1) without torchrun); an InputError for a ``WORLD_SIZE`` without torchrun's other variables."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    missing = [v for v in TORCHRUN_VARS if not os.environ.get(v)]
    if missing:
        raise InputError(f"WORLD_SIZE={world} but {', '.join(missing)} not set: start several processes with "
                         "torchrun --nproc-per-node N -m NeARSlicerLib.cli ..., or unset WORLD_SIZE")
    return int(os.environ["RANK"]), world


def close_group() -> None:
    """Leave the process group this process joined, if any (at the end of a torchrun command)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def exit_process(code: int) -> NoReturn:
    """End a process of a torchrun group whose work is done: leave the group, flush the standard
    streams and exit with ``code`` without the interpreter's teardown.

    Why: tearing down gloo's threads at interpreter exit, after ``destroy_process_group`` has
    returned, now and then aborts the process (SIGABRT, "terminate called without an active
    exception"; measured: about 1 in 20 to 1 in 250 two-process runs on a 2-core CPU, torch 2.13),
    and torchrun then reports a finished run as failed. Every output is whole by then (each is
    committed by an ``os.replace``), so nothing is lost by skipping the teardown."""
    close_group()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or gone: nothing left to flush
            pass
    os._exit(code)


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
        _, world = launch_rank()
        if world <= 1:
            return cls(0, 1, pick_device(device))
        local = int(os.environ["LOCAL_RANK"])
        dev = pick_device(device)
        if dev.type == "cuda" and local >= torch.cuda.device_count():
            raise InputError(f"process {local} of this node needs GPU {local} but only "
                             f"{torch.cuda.device_count()} are visible: use --nproc-per-node "
                             f"{torch.cuda.device_count()} (one process per GPU) or --device cpu")
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

    def sum_gradients(self, params: list[torch.Tensor], value: float = 0.0) -> float:
        """Replace each parameter's gradient by its sum over all processes, and return the sum of
        ``value`` (e.g. each process's share of the loss).

        A parameter that has no gradient in any process keeps none (Adam then leaves it alone, as in
        one process: the latent codes of cases outside the batch); one with a gradient in some
        process gets the sum, the others counting as zero. Two all-reduces per call: presence
        flags + value (float64), then all gradients as one flat vector.
        """
        if not self.active:
            return value
        flags = torch.tensor([float(p.grad is not None) for p in params] + [value], dtype=torch.float64,
                             device=self.device)
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
        dist.all_reduce(flags)
        dist.all_reduce(flat)
        offset = 0
        for p, present in zip(params, flags[:-1].tolist()):
            n = p.numel()
            p.grad = flat[offset:offset + n].view_as(p).clone() if present else None
            offset += n
        return float(flags[-1].item())

    def broadcast_(self, tensors: list[torch.Tensor]) -> None:
        """Overwrite ``tensors`` (in place) with rank 0's values, so that every process starts from the
        same state even where set-up is not bit-reproducible (e.g. on a GPU)."""
        if not self.active or not tensors:
            return
        with torch.no_grad():
            flat = torch.cat([t.detach().reshape(-1) for t in tensors])
            dist.broadcast(flat, 0)
            offset = 0
            for t in tensors:
                t.copy_(flat[offset:offset + t.numel()].view_as(t))
                offset += t.numel()

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        if self.active:
            close_group()
