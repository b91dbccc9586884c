"""Multi-process training with torch.distributed: DDP (gloo on CPU, nccl on GPU) or FSDP2.

Launched by `torchrun --nproc_per_node=N -m lmlab train ...`; a plain run is world size 1.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class Dist:
    """Where this process sits: rank, world size and its device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto") -> Dist:
    """Join the process group torchrun describes (if any) and pick this rank's device.

    `device` is "auto" or a torch device name; one this machine lacks raises `DeviceError`."""
    if device != "auto":
        from lmlab.devices import check_device

        check_device(device)
    cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        dev = torch.device("cuda" if device == "auto" else device)
        if world > 1 or dev.index is None:  # set_device needs an index: "cuda" means this rank's
            dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu" if device == "auto" else device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(
            "nccl" if dev.type == "cuda" else "gloo", device_id=dev if cuda else None
        )
    return Dist(rank, world, local, dev)


def wrap(model: nn.Module, d: Dist, parallel: str) -> nn.Module:
    """DDP or FSDP2 (`fully_shard` per block, then the root) around `model`; as is for one process."""
    if not d.enabled:
        return model
    if parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in getattr(model, "blocks", []):
            fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None)


def grad_sync(model: nn.Module, enabled: bool):
    """Context that skips gradient all-reduce on accumulation micro-steps (DDP no_sync / FSDP2 flag)."""
    if enabled:
        if hasattr(model, "set_requires_gradient_sync"):
            model.set_requires_gradient_sync(True)
        return contextlib.nullcontext()
    if hasattr(model, "no_sync"):
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(False)
    return contextlib.nullcontext()


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    """Sum of `t` over ranks (t itself on one process)."""
    if d.enabled:
        t = t.clone()
        dist.all_reduce(t)
    return t


def all_gather_object(obj, d: Dist) -> list:
    """Every rank's `obj`, in rank order."""
    if not d.enabled:
        return [obj]
    out = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def cleanup(wait: bool = True) -> None:
    """Leave the process group (call once at the end of a distributed run). With `wait` every rank
    first meets at a barrier, so none tears gloo's connections down while a peer still uses them
    (seen: a rank aborting at exit, "terminate called without an active exception"); a rank
    leaving on an error does not wait for peers that may never arrive."""
    if dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()
