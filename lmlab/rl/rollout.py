"""Rollouts: G sampled completions per prompt with their log-probs, on the decode core
(one shared prefill for the prompts' common prefix, packed weights for the decode steps)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lmlab.generate.decode import Decoding, check_context, shared_prefix_len
from lmlab.generate.sampling import SamplingConfig

__all__ = ["Rollout", "rollout", "shared_prefix_len"]


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


ROLLOUT_SETTINGS = (
    "sampling", "stop_ids", "mask_truncated", "generator", "share_prefix", "compile"
)  # fmt: skip


@torch.no_grad()
def rollout(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    group_size: int,
    max_new_tokens: int,
    *,
    sampling: SamplingConfig | None = None,
    stop_ids: Sequence[int] = (),
    mask_truncated: bool = False,
    generator: torch.Generator | None = None,
    share_prefix: bool = True,
    compile: bool = False,
    **overrides: Any,
) -> Rollout:
    """Sample `group_size` completions of each prompt (token ids); temperature 0 decodes greedily.

    `sampling` defaults to temperature 1; its fields may be given as keywords (`temperature=0.7`).
    The prompts' common prefix (system prompt, demonstrations) is prefilled once for all rows,
    each prompt's own rest once, and then the cache rows are repeated G times. Decode steps use
    packed weights (`PackedWeights`) where that pays, or with `compile` run through
    `torch.compile` on a static cache (compiled once per batch and length bucket).
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError(
            "every prompt needs at least one token (got an empty prompt list or prompt)"
        )
    if group_size < 1 or max_new_tokens < 1:
        raise ValueError(
            f"group_size={group_size} and max_new_tokens={max_new_tokens} must be >= 1"
        )
    base = sampling or SamplingConfig(temperature=1.0)
    sampling = base.updated(overrides, "rollout", ROLLOUT_SETTINGS)
    check_context(model, max(map(len, prompts)), max_new_tokens)
    run = Decoding(
        model, prompts, sampling, max_new_tokens, stop_ids=stop_ids, generator=generator,
        group_size=group_size, share_prefix=share_prefix, logprobs=True, compile=compile,
        pack=not compile,
    )  # fmt: skip
    out, logps, alive = [], [], []  # per step [N]; alive: 1 where the token is in the completion
    for step in run:
        out.append(step.tokens)
        logps.append(step.logps)
        alive.append(step.alive)
    comp = torch.stack(out, 1)
    cmask = torch.stack(alive, 1).long()
    truncated = ~run.done
    completions = [row[m.bool()].tolist() for row, m in zip(comp, cmask, strict=True)]
    loss_mask = cmask.clone()
    if mask_truncated:
        loss_mask[truncated] = 0
    expand = torch.arange(len(prompts), device=comp.device).repeat_interleave(group_size)
    return Rollout(
        prefix=run.prefix,
        tokens=torch.cat([run.tokens.index_select(0, expand), comp], 1),
        attention_mask=torch.cat([run.mask.index_select(0, expand), cmask], 1),
        completion_mask=loss_mask,
        completions=completions,
        truncated=truncated,
        logps=torch.stack(logps, 1) * cmask,
        group_size=group_size,
    )
