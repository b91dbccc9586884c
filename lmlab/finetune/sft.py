"""Supervised finetuning on prompt/response pairs: the model's chat template, loss on responses only."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lmlab.data.tokens import IGNORE_INDEX
from lmlab.errors import InputError
from lmlab.train.config import TrainConfig, finetune_config
from lmlab.train.task import EpochOrder, steps_per_epoch
from lmlab.train.trainer import Callback, Trainer


def sft_example(
    tokenizer, prompt: str, response: str, system: str | None = None, max_len: int = 512
) -> tuple[list[int], list[int]]:
    """(ids, labels): the rendered conversation; labels are IGNORE_INDEX except on the response.

    With a chat template the response is the assistant turn (its closing tokens included);
    without one it is the plain text after the prompt, followed by EOS when the tokenizer has one.
    """
    if getattr(tokenizer, "chat_template", None):
        msgs = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}
        ]
        head = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(
            [*msgs, {"role": "assistant", "content": response}], tokenize=False
        )
        if not full.startswith(head):
            raise ValueError(
                "this chat template does not render the prompt as a prefix of the conversation; "
                "SFT needs that to find the response tokens"
            )
        p_ids, r_ids = tokenizer.encode(head), tokenizer.encode(full[len(head) :])
    else:
        eos = [tokenizer.eos_id] if getattr(tokenizer, "eos_id", None) is not None else []
        p_ids, r_ids = tokenizer.encode(prompt), tokenizer.encode(response) + eos
    if not r_ids:
        raise ValueError(f"empty response for prompt {prompt[:40]!r}: nothing to learn")
    ids = (p_ids + r_ids)[:max_len]
    labels = ([IGNORE_INDEX] * len(p_ids) + r_ids)[:max_len]
    return ids, labels


def sft_batch(examples: list[tuple[list[int], list[int]]], pad_id: int = 0):
    """Right-padded tokens, attention mask and labels [B, T]."""
    T = max(len(i) for i, _ in examples)
    tokens = torch.full((len(examples), T), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), T), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros(len(examples), T, dtype=torch.long)
    for b, (i, lab) in enumerate(examples):
        tokens[b, : len(i)], labels[b, : len(lab)], mask[b, : len(i)] = (
            torch.tensor(i),
            torch.tensor(lab),
            1,
        )
    return tokens, mask, labels


def sft_loss(
    model: nn.Module,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    labels: torch.Tensor,
    reduction: str = "mean",
) -> torch.Tensor:
    """Next-token cross-entropy over response tokens ("mean" or "sum"), from the model's fused
    `targets=` loss: position t predicts labels[t + 1]; virtual prompt positions are skipped."""
    targets = torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), IGNORE_INDEX)], 1)
    return model(tokens, attention_mask=mask, targets=targets, loss_reduction=reduction)


def _sft_train() -> TrainConfig:
    return finetune_config(batch_size=8, lr=1e-4)


@dataclass
class SFTConfig:
    """What `train_sft` needs beyond the shared training knobs in `train` (lr, max_steps,
    batch_size, out_dir, resume, ...). `epochs` > 0 sets `train.max_steps` to that many passes."""

    train: TrainConfig = field(default_factory=_sft_train)
    epochs: int = 0
    max_len: int = 512
    system: str | None = None


class SFTTask:
    """Shuffled passes over (ids, labels) examples; loss summed over response tokens."""

    name = "sft"

    def __init__(self, examples: list[tuple[list[int], list[int]]], pad_id: int = 0) -> None:
        self.examples, self.pad_id = examples, pad_id
        self.order = EpochOrder(len(examples))

    def batch(self, split: str, batch_size: int, generator: torch.Generator):
        ix = self.order.take(batch_size, generator)
        return sft_batch([self.examples[i] for i in ix], self.pad_id)

    def count(self, batch) -> int:
        return int((batch[2][:, 1:] != IGNORE_INDEX).sum())

    def tokens(self, batch) -> int:
        return int(batch[1].sum())

    def loss(self, net: nn.Module, batch) -> torch.Tensor:
        return sft_loss(net, *batch, reduction="sum")

    def state_dict(self) -> dict[str, Any]:
        return self.order.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order.load_state_dict(state)


def train_sft(
    model: nn.Module,
    tokenizer,
    pairs: list[tuple[str, str]],
    cfg: SFTConfig | None = None,
    callbacks: list[Callback] = (),
) -> list[dict]:
    """Train the parameters that require grad (all, or the PEFT ones) on the pairs with the one
    training core; returns its history (a record per logged step: step, loss, lr, tok_s)."""
    cfg = cfg or SFTConfig()
    if not pairs:
        raise InputError(
            "no prompt/response pairs to train on; pass at least one (prompt, response)"
        )
    if not any(p.requires_grad for p in model.parameters()):
        raise InputError("nothing to train: every parameter is frozen; apply LoRA/PEFT or unfreeze")
    examples = [sft_example(tokenizer, p, r, cfg.system, cfg.max_len) for p, r in pairs]
    pad = tokenizer.pad_id if getattr(tokenizer, "pad_id", None) is not None else 0
    tcfg = cfg.train
    if tcfg.device == "auto":  # train where the model is
        tcfg = tcfg.replace(device=str(next(model.parameters()).device))
    if cfg.epochs > 0:
        steps = cfg.epochs * steps_per_epoch(len(examples), tcfg.batch_size * tcfg.grad_accum)
        tcfg = tcfg.replace(max_steps=steps)
    history = Trainer(model, tcfg, SFTTask(examples, pad), list(callbacks)).fit()
    model.eval()
    return history
