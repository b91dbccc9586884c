"""Attention sinks: how much attention each position / token soaks up, per layer and head.

share[l, h, s] is the mean over (valid) queries of the attention weight on key s, so each row
sums to 1 (minus what a learned GPT-OSS sink logit absorbs, reported as `learned`). Decoders
pile attention on the first token; BERT-style encoders on [CLS]/[SEP] and punctuation.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from tqdm import tqdm

from lmlab.model import Transformer


@dataclass
class SinkShare:
    """Attention share per key position, averaged over queries and the batch."""

    by_head: torch.Tensor  # [L, H, S]
    learned: torch.Tensor  # [L, H]: share absorbed by learned sink logits (0 without them)

    @property
    def by_layer(self) -> torch.Tensor:
        """[L, S]: averaged over heads."""
        return self.by_head.mean(1)

    def first_token(self) -> torch.Tensor:
        """[L]: share of attention on position 0 per layer."""
        return self.by_layer[:, 0]


def _valid_queries(pattern: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Weights [B, 1, T, 1] over queries: 1 for real tokens, 0 for padding."""
    B, _, T, _ = pattern.shape
    if mask is None:
        return pattern.new_ones(B, 1, T, 1)
    return mask.to(pattern.dtype)[:, None, :, None]


def sink_share(
    model: Transformer, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> SinkShare:
    """Per-layer / per-head share of attention going to each key position: one cached forward."""
    L, H, T = model.cfg.n_layers, model.cfg.n_heads, tokens.shape[-1]
    by_head, learned = torch.zeros(L, H, T), torch.zeros(L, H)

    def hook(pattern: torch.Tensor, hp) -> None:
        layer = int(hp.name.split(".")[1])
        w = _valid_queries(pattern, attention_mask)
        n = w.sum((0, 2))  # [1, 1]
        by_head[layer] = ((pattern.float() * w).sum((0, 2)) / n).cpu()
        learned[layer] = ((1 - pattern.float().sum(-1, keepdim=True)) * w).sum(
            (0, 2, 3)
        ).cpu() / n.view(-1)

    with torch.no_grad():
        model.run_with_hooks(
            tokens,
            attention_mask=attention_mask,
            fwd_hooks=[(lambda name: name.endswith("attn.hook_pattern"), hook)],
        )
    return SinkShare(by_head, learned.clamp(min=0))


def received_per_token(
    model: Transformer, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """[B, T]: attention each token receives, averaged over layers, heads and the queries that can see it."""
    B, T = tokens.shape
    total = torch.zeros(B, T)
    causal = model.cfg.causal
    q_mask = attention_mask.float() if attention_mask is not None else torch.ones(B, T)
    if causal:  # key s is visible to queries s..T-1
        seen_by = q_mask.flip(-1).cumsum(-1).flip(-1)
    else:
        seen_by = q_mask.sum(-1, keepdim=True).expand(B, T)

    def hook(pattern: torch.Tensor, hp) -> None:
        total.add_((pattern.float() * q_mask[:, None, :, None]).sum(2).mean(1).cpu())

    with torch.no_grad():
        model.run_with_hooks(
            tokens,
            attention_mask=attention_mask,
            fwd_hooks=[(lambda name: name.endswith("attn.hook_pattern"), hook)],
        )
    return total / model.cfg.n_layers / seen_by.clamp(min=1)


@dataclass(frozen=True)
class SinkToken:
    """A token string and the mean attention it receives per visible query, over its occurrences."""

    token: str
    mean_received: float
    count: int


def top_sink_tokens(
    model: Transformer,
    encode: Callable[[str], list[int]],
    decode: Callable[[int], str],
    texts: Iterable[str],
    *,
    k: int = 10,
    min_count: int = 3,
    skip_first: bool = False,
    max_len: int = 128,
    min_queries: int = 4,
) -> list[SinkToken]:
    """Tokens that receive the most attention over a corpus, ranked by mean attention per visible query.

    Keys seen by fewer than `min_queries` queries (the last few of a causal sequence) are skipped
    as noise; `skip_first` drops position 0 (in decoders it is a sink whatever the token).
    """
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for text in tqdm(list(texts), desc="sink tokens", leave=False):
        ids = encode(text)[:max_len]
        if len(ids) < 2:
            continue
        tokens = torch.tensor([ids])
        rec = received_per_token(model, tokens)[0]
        T = len(ids)
        for s, i in enumerate(ids):
            if (skip_first and s == 0) or (model.cfg.causal and T - s < min_queries):
                continue
            name = decode(i)
            sums[name] += float(rec[s])
            counts[name] += 1
    ranked = sorted(
        (SinkToken(t, sums[t] / counts[t], counts[t]) for t in sums if counts[t] >= min_count),
        key=lambda x: -x.mean_received,
    )
    return ranked[:k]
