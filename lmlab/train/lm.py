"""`LMTask`: next-token language modelling on a data source with `get_batch` (the `lmlab train` task)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from lmlab.data.tokens import IGNORE_INDEX
from lmlab.train import distributed as dist
from lmlab.train.logging import flops_per_token

if TYPE_CHECKING:
    from lmlab.train.trainer import Trainer


class LMTask:
    """Batches (x, y) [B, T] from `data.get_batch`; loss is the model's fused LM-head cross-entropy
    summed over the labels that are not IGNORE_INDEX; evaluation is the mean token loss on fixed
    batches of both splits."""

    name = "train"

    def __init__(self, data: Any) -> None:
        self.data = data

    def batch(
        self, split: str, batch_size: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data.get_batch(split, batch_size, generator)

    def count(self, batch: tuple[torch.Tensor, torch.Tensor]) -> int:
        return int((batch[1] != IGNORE_INDEX).sum())

    def tokens(self, batch: tuple[torch.Tensor, torch.Tensor]) -> int:
        self.seq_len = batch[0].shape[1]
        return batch[0].numel()

    def loss(self, net: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch  # the model's fused LM-head loss: no [batch, T, vocab] logits kept
        return net(x, targets=y, loss_reduction="sum")

    def flops_per_token(self, model: torch.nn.Module) -> float:
        n_params = sum(p.numel() for p in model.parameters())
        return flops_per_token(model.cfg, n_params, getattr(self, "seq_len", model.cfg.max_seq_len))

    @torch.no_grad()
    def evaluate(self, trainer: Trainer) -> dict[str, float]:
        """Mean token loss on `eval_iters` fixed batches of each split (same batches every time)."""
        cfg, d = trainer.cfg, trainer.dist
        out = {}
        for split in ("train", "val"):
            g = torch.Generator().manual_seed(cfg.seed + 1)
            total = torch.zeros((), device=d.device)
            count = 0
            for _ in range(cfg.eval_iters):
                b = self.batch(split, cfg.batch_size, g)
                count += self.count(b)
                with trainer.autocast:
                    total += self.loss(trainer.net, trainer.shard(b))
            key = "train_eval_loss" if split == "train" else "val_loss"
            out[key] = float(dist.all_reduce_sum(total, d)) / max(count, 1)
        return out

    def state_dict(self) -> dict[str, Any]:
        return self.data.state_dict() if hasattr(self.data, "state_dict") else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if hasattr(self.data, "load_state_dict"):
            self.data.load_state_dict(state)
