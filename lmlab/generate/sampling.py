"""Logit processing and token choice: temperature, top-k, top-p, min-p, repetition penalty."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class SamplingConfig:
    """How the next token is chosen; temperature 0 means greedy."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0 (0 = greedy)")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k={self.top_k} must be >= 1 (or None to disable)")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1] (or None to disable)")
        if self.min_p is not None and not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p={self.min_p} must be in [0, 1] (or None to disable)")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty={self.repetition_penalty} must be > 0 (1 = off)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def apply_repetition_penalty(
    logits: torch.Tensor, seen: torch.Tensor, penalty: float
) -> torch.Tensor:
    """CTRL-style penalty on tokens already in the row: divide positive logits, multiply negative."""
    if penalty == 1.0:
        return logits
    picked = logits.gather(-1, seen)
    picked = torch.where(picked > 0, picked / penalty, picked * penalty)
    return logits.scatter(-1, seen, picked)


def filter_logits(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """Temperature, then top-k, top-p (nucleus) and min-p; removed tokens get -inf."""
    logits = logits / cfg.temperature
    if cfg.top_k is not None and cfg.top_k < logits.shape[-1]:
        kth = logits.topk(cfg.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p is not None and cfg.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the mass before it already reaches top_p (the top token always stays)
        drop = (probs.cumsum(-1) - probs) >= cfg.top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    if cfg.min_p is not None and cfg.min_p > 0:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(
            probs < cfg.min_p * probs.max(-1, keepdim=True).values, float("-inf")
        )
    return logits


def choose(
    logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None
) -> torch.Tensor:
    """Next token ids [B] from last-position logits [B, vocab]."""
    if cfg.greedy:
        return logits.argmax(-1)
    return draw(filter_logits(logits.float(), cfg).softmax(-1), generator)


BLOCK = 256  # vocabulary slice summed as one unit by `draw`


def draw(weights: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One index per row, drawn with probability proportional to `weights` [B, V] (>= 0).

    Inverse-CDF sampling with one uniform per row (`torch.multinomial` draws V exponentials per
    row, ~20x slower on a CPU for a 49k vocabulary), in two levels: a block of `BLOCK` tokens is
    picked from the cumulative block sums, then a token inside it, so the sequential cumsum runs
    over V / BLOCK + BLOCK numbers instead of V. Index i is drawn when the mass before it is
    <= u * total < the mass through it, so tokens of zero weight never are.
    """
    B, V = weights.shape
    if V % BLOCK:
        weights = F.pad(weights, (0, BLOCK - V % BLOCK))  # zero weight: never drawn
    blocks = weights.view(B, -1, BLOCK)
    cum = blocks.sum(-1).cumsum_(-1)  # [B, V / BLOCK]
    u = torch.rand(B, 1, generator=generator, dtype=cum.dtype, device=cum.device) * cum[:, -1:]
    b = _search(cum, u)  # [B, 1]
    before = torch.where(b > 0, cum.gather(-1, (b - 1).clamp_(min=0)), 0)
    inner = blocks.gather(1, b[..., None].expand(B, 1, BLOCK)).squeeze(1).cumsum_(-1)
    return (b * BLOCK + _search(inner, u - before)).squeeze(-1)


def _search(cum: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per row, the first index whose cumulative weight exceeds x [B, 1]; never past the last
    index of positive weight (x may round up to the row's total)."""
    last = (cum < cum[:, -1:]).sum(-1, keepdim=True)
    return torch.searchsorted(cum, x, right=True).minimum(last)


def sample_with_logprobs(
    logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next token ids [B] and their log-probabilities [B] under the temperature alone.

    The log-probs ignore top-k/top-p/min-p (what RL ratios are taken against); temperature 0 picks
    the argmax and scores it at temperature 1. Without filters one exp pass serves both the draw
    and the normalizer, instead of separate softmax and log-softmax passes.
    """
    t = 1.0 if cfg.greedy else cfg.temperature
    weights = logits.float() / t if t != 1 else logits.to(torch.float32, copy=True)
    # exp(logits / T - max) in place: a second vocabulary-sized buffer per step would be fresh
    # memory, and its page faults cost more than the arithmetic
    weights.sub_(weights.amax(-1, keepdim=True)).exp_()
    if cfg.greedy:
        tokens = logits.argmax(-1)
    elif cfg.top_k is None and cfg.top_p is None and not cfg.min_p:
        tokens = draw(weights, generator)
    else:
        tokens = choose(logits, cfg, generator)
    logp = weights.gather(-1, tokens[:, None]).log() - weights.sum(-1, keepdim=True).log()
    return tokens, logp.squeeze(-1)
