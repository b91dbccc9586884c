"""Supervised finetuning on prompt/response pairs: the model's chat template, loss on responses only."""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from lmlab.data.tokens import IGNORE_INDEX
from lmlab.train.optimizers import can_fuse


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
        head = tokenizer.apply_chat_template(msgs, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(
            [*msgs, {"role": "assistant", "content": response}], add_generation_prompt=False
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
    model: nn.Module, tokens: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Mean next-token cross-entropy over response tokens (virtual prompt positions dropped)."""
    logits = model(tokens, attention_mask=mask)[:, -tokens.shape[1] :]
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX
    )


@dataclass
class SFTConfig:
    """Training knobs for `train_sft`."""

    epochs: int = 1
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.0
    max_len: int = 512
    system: str | None = None
    seed: int = 0


def train_sft(
    model: nn.Module, tokenizer, pairs: list[tuple[str, str]], cfg: SFTConfig | None = None
) -> list[dict]:
    """Train the parameters that require grad (all, or the PEFT ones) on the pairs; returns per-epoch losses."""
    cfg = cfg or SFTConfig()
    if not pairs:
        raise ValueError("no prompt/response pairs to train on")
    torch.manual_seed(cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: every parameter is frozen")
    examples = [sft_example(tokenizer, p, r, cfg.system, cfg.max_len) for p, r in pairs]
    pad = tokenizer.pad_id if getattr(tokenizer, "pad_id", None) is not None else 0
    opt = torch.optim.AdamW(
        params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=can_fuse(params)
    )
    steps = cfg.epochs * math.ceil(len(examples) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / steps)
    history, t0 = [], time.perf_counter()
    model.train()
    bar = tqdm(total=steps, desc="sft", leave=False)
    for epoch in range(cfg.epochs):
        order = list(range(len(examples)))
        random.Random(cfg.seed + epoch).shuffle(order)
        total = 0.0
        for i in range(0, len(order), cfg.batch_size):
            loss = sft_loss(
                model, *sft_batch([examples[j] for j in order[i : i + cfg.batch_size]], pad)
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
        n_batches = math.ceil(len(order) / cfg.batch_size)
        history.append(
            {"epoch": epoch + 1, "loss": total / n_batches, "seconds": time.perf_counter() - t0}
        )
    bar.close()
    model.eval()
    return history
