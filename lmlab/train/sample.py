"""A plain sampling loop (temperature, top-k) for looking at what a freshly trained model writes."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def sample(
    model: nn.Module,
    prompt: list[int],
    max_new_tokens: int,
    temperature: float = 0.8,
    top_k: int | None = 40,
    generator: torch.Generator | None = None,
) -> list[int]:
    """Continue `prompt` by `max_new_tokens` ids (no KV cache: recomputes the window each step)."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    ctx = model.cfg.max_seq_len
    ids = torch.tensor([prompt], dtype=torch.long, device=device)
    for _ in range(max_new_tokens):
        logits = model(ids[:, -ctx:])[0, -1].float()
        if temperature <= 0:
            nxt = logits.argmax(-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k:
                kth = logits.topk(min(top_k, logits.numel())).values[-1]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(logits.softmax(-1).cpu(), 1, generator=generator).to(device)
        ids = torch.cat([ids, nxt.view(1, 1)], 1)
    model.train(was)
    return ids[0, len(prompt) :].tolist()
