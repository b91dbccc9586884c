"""Samples printed during and after training: what a freshly trained model writes, on the decode core."""

from __future__ import annotations

import torch
from torch import nn

from lmlab.generate.decode import Decoding
from lmlab.generate.sampling import SamplingConfig


@torch.no_grad()
def sample(
    model: nn.Module,
    prompt: list[int],
    max_new_tokens: int,
    temperature: float = 0.8,
    top_k: int | None = 40,
    generator: torch.Generator | None = None,
) -> list[int]:
    """Continue `prompt` by `max_new_tokens` ids (KV-cached; no stop token).

    A continuation longer than the context goes on from the last half context of text, re-read
    into a fresh cache each time the cache fills.
    """
    sampling = SamplingConfig(temperature=max(temperature, 0.0), top_k=top_k or None)
    ctx = model.cfg.max_seq_len
    ids = list(prompt)[-ctx:]
    out: list[int] = []
    while len(out) < max_new_tokens:
        window = (list(prompt) + out)[-max(ctx // 2, 1) :] if out else ids
        n = min(max_new_tokens - len(out), ctx - len(window) + 1)
        for step in Decoding(model, [window], sampling, n, generator=generator):
            out.append(int(step.tokens[0]))
    return out
