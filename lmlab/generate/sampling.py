"""Logit processing and token choice: temperature, top-k, top-p, min-p, repetition penalty."""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from lmlab.errors import InputError


@dataclass
class SamplingConfig:
    """How the next token is chosen; temperature 0 means greedy. The one definition of the sampling
    knobs: `generate`, `Chat`, rollouts and the `lmlab generate` / `lmlab chat` flags come from it."""

    temperature: float = field(default=0.0, metadata={"help": "0 = greedy; higher = more random"})
    top_k: int | None = field(
        default=None, metadata={"help": "sample among the k most likely tokens only"}
    )
    top_p: float | None = field(
        default=None,
        metadata={"help": "nucleus sampling: the fewest tokens holding this much probability"},
    )
    min_p: float | None = field(
        default=None,
        metadata={"help": "drop tokens less likely than min_p x the most likely token"},
    )
    repetition_penalty: float = field(
        default=1.0, metadata={"help": "> 1 discourages tokens already in the text; 1 = off"}
    )

    def __post_init__(self) -> None:
        """Refuse settings that would sample nonsense; the one place sampling knobs are checked."""
        t, k, p, m, r = (
            self.temperature, self.top_k, self.top_p, self.min_p, self.repetition_penalty
        )  # fmt: skip
        if not _number(t) or not math.isfinite(t) or t < 0:
            raise InputError(f"temperature={t} must be a finite number >= 0 — 0 means greedy")
        if k is not None and (not _number(k, numbers.Integral) or k < 1):
            raise InputError(f"top_k={k} must be an int >= 1 — or None to disable")
        if p is not None and (not _number(p) or not 0 < p <= 1):
            raise InputError(f"top_p={p} must be in (0, 1] — or None to disable")
        if m is not None and (not _number(m) or not 0 <= m <= 1):
            raise InputError(f"min_p={m} must be in [0, 1] — or None to disable")
        if not _number(r) or not math.isfinite(r) or r <= 0:
            raise InputError(f"repetition_penalty={r} must be a finite number > 0 — 1 means off")

    def changed(self) -> list[str]:
        """The knobs set away from plain greedy decoding, as `name=value` strings."""
        out = [f"temperature={self.temperature}"] if self.temperature != 0 else []
        out += [
            f"{n}={v}" for n in ("top_k", "top_p", "min_p") if (v := getattr(self, n)) is not None
        ]
        if self.repetition_penalty != 1:
            out.append(f"repetition_penalty={self.repetition_penalty}")
        return out

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def updated(
        self, overrides: dict[str, Any], where: str, others: tuple[str, ...] = ()
    ) -> SamplingConfig:
        """A copy with `overrides` (sampling field names, as keyword arguments of `where`); an
        unknown name raises `InputError` listing the sampling fields and `where`'s `others`."""
        names = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(overrides) - set(names))
        if unknown:
            raise InputError(
                f"{where} got unknown setting(s) {', '.join(unknown)} — it takes the sampling "
                f"settings {', '.join(names)}"
                + (f" and {', '.join(others)}" if others else "")
                + " (or sampling=SamplingConfig(...))"
            )
        return dataclasses.replace(self, **overrides) if overrides else self


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


def _number(x: object, kind: type = numbers.Real) -> bool:
    """A real (or `kind`) number, not a bool; NaN compares false, so the range checks catch it."""
    return isinstance(x, kind) and not isinstance(x, bool)


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
