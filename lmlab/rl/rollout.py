"""Rollouts: G sampled completions per prompt from one shared prefill, on the static KV cache."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lmlab.generate.compiled import decoding_cache
from lmlab.generate.generate import check_context, left_pad
from lmlab.generate.packed import packed_linears
from lmlab.generate.sampling import SamplingConfig, sample_with_logprobs
from lmlab.rl.grpo import unembed


@dataclass
class Rollout:
    """N = n_prompts * G completions, grouped by prompt, ready for the loss.

    prefix [S]: the tokens every prompt starts with (run once, shared); tokens [N, P - S + L]: the
    rest of each prompt, left-padded, then the completion (pads after a stop token);
    attention_mask like tokens; completion_mask [N, L]: 1 on completion tokens that count in the loss.
    """

    prefix: torch.Tensor
    tokens: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    completions: list[list[int]]
    truncated: torch.Tensor  # bool [N]: hit max_new_tokens without a stop token
    logps: torch.Tensor  # [N, L] log-probs at sampling time (temperature applied, no top-k/p)
    group_size: int

    @property
    def n_completion(self) -> int:
        return self.completion_mask.shape[1]

    @property
    def lengths(self) -> torch.Tensor:
        return torch.tensor([len(c) for c in self.completions], dtype=torch.float)


def shared_prefix_len(prompts: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of all prompts, leaving each at least one own token."""
    first, n = prompts[0], min(map(len, prompts)) - 1
    for p in prompts[1:]:
        i = 0
        while i < n and p[i] == first[i]:
            i += 1
        n = i
    return max(n, 0)


@torch.no_grad()
def rollout(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    group_size: int,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_p: float | None = None,
    top_k: int | None = None,
    stop_ids: Sequence[int] = (),
    mask_truncated: bool = False,
    generator: torch.Generator | None = None,
    share_prefix: bool = True,
    compile: bool = False,
) -> Rollout:
    """Sample `group_size` completions of each prompt (token ids); temperature 0 decodes greedily.

    The prompts' common prefix (system prompt, demonstrations) is prefilled once for all rows,
    each prompt's own rest once, and then the cache rows are repeated G times. `compile`: decode
    steps run through `torch.compile` on a static cache (compiled once per batch and length bucket).
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError(
            "every prompt needs at least one token (got an empty prompt list or prompt)"
        )
    if group_size < 1 or max_new_tokens < 1:
        raise ValueError(
            f"group_size={group_size} and max_new_tokens={max_new_tokens} must be >= 1"
        )
    check_context(model, max(map(len, prompts)), max_new_tokens)
    device = next(model.parameters()).device
    sampling = SamplingConfig(temperature, top_k, top_p)
    pad = model.cfg.pad_id  # pads are masked: any id inside the vocabulary works
    stops = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    try:
        S = shared_prefix_len(prompts) if share_prefix else 0
        prefix = torch.tensor(list(prompts[0][:S]), dtype=torch.long, device=device)
        rest = [list(p[S:]) for p in prompts]
        p_tokens, p_mask = (t.to(device) for t in left_pad(rest, pad))
        needed = S + p_tokens.shape[1] + max_new_tokens - 1  # the last token is never fed back
        cache, forward = decoding_cache(model, 1 if S else len(prompts), needed, compile)
        N = len(prompts) * group_size
        packed = contextlib.nullcontext() if compile else packed_linears(model, N)
        with packed:  # packed for the N-row decode steps (bf16 packing also serves the prefill)
            if S:
                model(prefix[None], cache=cache, return_hidden=True)
                cache.reorder(torch.zeros(len(prompts), dtype=torch.long, device=device))
            hidden = model(p_tokens, attention_mask=p_mask, cache=cache, return_hidden=True)
            logits = unembed(model, hidden[:, -1])
            expand = torch.arange(len(prompts), device=device).repeat_interleave(group_size)
            cache.reorder(expand)
            logits = logits.index_select(0, expand)
            out, logps = [], []
            done = torch.zeros(N, dtype=torch.bool, device=device)
            alive = []  # [N] per step: 1 where the token is part of the completion
            for step in range(max_new_tokens):
                nxt, lp = sample_with_logprobs(logits, sampling, generator)
                nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
                alive.append(~done)
                out.append(nxt)
                logps.append(lp)
                done = done | torch.isin(nxt, stops)
                if bool(done.all()) or step + 1 == max_new_tokens:
                    break
                logits = forward(nxt[:, None], cache=cache)[:, -1]
    finally:
        model.train(was_training)
    comp = torch.stack(out, 1)
    cmask = torch.stack(alive, 1).long()
    truncated = ~done
    completions = [row[m.bool()].tolist() for row, m in zip(comp, cmask, strict=True)]
    loss_mask = cmask.clone()
    if mask_truncated:
        loss_mask[truncated] = 0
    return Rollout(
        prefix=prefix,
        tokens=torch.cat([p_tokens.index_select(0, expand), comp], 1),
        attention_mask=torch.cat([p_mask.index_select(0, expand), cmask], 1),
        completion_mask=loss_mask,
        completions=completions,
        truncated=truncated,
        logps=torch.stack(logps, 1) * cmask,
        group_size=group_size,
    )
