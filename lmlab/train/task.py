"""What a kind of training supplies to the one training core (`lmlab.train.trainer.Trainer`).

The core owns everything shared: optimizer, schedule, accumulation, clipping, autocast, compile,
DDP/FSDP, evaluation cadence, atomic checkpoints with exact resume, metrics, progress and MFU.
A `Task` says only what differs:

    batch(split, batch_size, generator) -> batch     one *global* micro-batch (same on every rank),
                                                     drawn only from `generator` (checkpointed)
    count(batch) -> int                              units the loss sums over (tokens, examples)
    loss(net, batch) -> Tensor                       the SUM of the loss over those units; the core
                                                     divides by the summed count of all micro-batches

Optional members (the core checks with hasattr):

    name: str                                        progress-bar label
    tokens(batch) -> int                             tokens processed (enables tok_s in the records)
    flops_per_token(model) -> float                  training FLOPs per token (enables mfu)
    evaluate(trainer) -> dict[str, float]            run at `eval_interval` and the last step
    param_groups(model, cfg) -> list[dict]           custom AdamW groups; a group may carry
                                                     "lr_scale" (its lr = schedule lr x lr_scale)
    train_step(trainer) -> dict[str, float]          a whole step instead of batch/count/loss
                                                     (GRPO: rollout, rewards, optimize); it calls
                                                     `trainer.optimizer_step()` (-> grad norm)
                                                     once or more and
                                                     returns metrics incl. "loss" (and "tokens")
    state_dict() / load_state_dict(state)            task state saved in checkpoints (data position)

Which parameters train (PEFT, frozen blocks) is the model's `requires_grad` flags.
Batches are moved to the device; with several ranks each tensor is split along dim 0.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class Task(Protocol):
    """The minimum a kind of training supplies: batches, their size and a summed loss."""

    def batch(self, split: str, batch_size: int, generator: torch.Generator) -> Any: ...

    def count(self, batch: Any) -> int: ...

    def loss(self, net: torch.nn.Module, batch: Any) -> torch.Tensor: ...


def is_task(obj: Any) -> bool:
    """Whether `obj` is a `Task` or supplies whole steps (`train_step`)."""
    return hasattr(obj, "train_step") or isinstance(obj, Task)


def to_device(batch: Any, device: torch.device, rank: int = 0, world: int = 1) -> Any:
    """Tensors of `batch` (nested tuples, lists, dicts) moved to `device`; with world > 1 each is
    cut to this rank's slice along dim 0. Other values pass through unchanged."""
    if isinstance(batch, torch.Tensor):
        if world > 1:
            n = batch.shape[0] // world
            batch = batch[rank * n : (rank + 1) * n]
        return batch.to(device, non_blocking=True)
    if isinstance(batch, tuple | list):
        return type(batch)(to_device(b, device, rank, world) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device, rank, world) for k, v in batch.items()}
    return batch


class EpochOrder:
    """Shuffled passes over `n` examples, reshuffled from the trainer's generator at each new
    epoch; its position is task state, so a resumed run continues mid-epoch exactly."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.order: torch.Tensor | None = None
        self.pos = 0
        self.epoch = 0

    def take(self, k: int, generator: torch.Generator) -> list[int]:
        """The next `k` indices (the tail of an epoch is a smaller batch, as with a DataLoader)."""
        if self.order is None or self.pos >= self.n:
            self.order = torch.randperm(self.n, generator=generator)
            self.pos = 0
            self.epoch += 1
        ix = self.order[self.pos : self.pos + k].tolist()
        self.pos += len(ix)
        return ix

    def state_dict(self) -> dict[str, Any]:
        return {"order": self.order, "pos": self.pos, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order, self.pos, self.epoch = state["order"], state["pos"], state["epoch"]


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimizer steps for one pass over `n` examples."""
    return -(-n // batch_size)
