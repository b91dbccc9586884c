"""Head detectors: previous-token, duplicate-token, induction and sink heads, scored on patterns.

All detectors read attention patterns on a batch of BOS + n random tokens repeated twice
(Olsson et al. 2022): query q in the second copy attends to its previous occurrence q - n
(duplicate), to the token after it q - n + 1 (induction), to q - 1 (previous token), or to
position 0 (sink). A score is the mean attention on that diagonal: 1.0 is a perfect head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmlab.model import Transformer

KINDS = ("previous_token", "duplicate_token", "induction", "sink")


def repeated_tokens(
    model: Transformer, n: int = 50, batch: int = 8, *, seed: int = 0, bos: int | None = None
) -> torch.Tensor:
    """[batch, 1 + 2n]: a BOS (the model's, else 0), then n random ids, then the same n again."""
    vocab = model.cfg.vocab_size
    bos = model.cfg.bos_token_id if bos is None else bos
    # a shrunken preset may keep a stale BOS id
    bos = 0 if bos is None or not 0 <= bos < vocab else bos
    if 2 * n + 1 > model.cfg.max_seq_len:
        raise ValueError(
            f"n={n} gives {2 * n + 1} tokens, beyond max_seq_len={model.cfg.max_seq_len}; lower n"
        )
    g = torch.Generator().manual_seed(seed)
    # skip the first ids, where special tokens usually live
    low = min(max(vocab // 100, 3), vocab - 1)
    first = torch.randint(low, vocab, (batch, n), generator=g)
    return torch.cat([torch.full((batch, 1), bos), first, first], 1)


def _diagonal(pattern: torch.Tensor, offset: int, queries: slice) -> torch.Tensor:
    """Mean over batch and the chosen queries of pattern[..., q, q - offset]: [..., H] -> [H]."""
    T = pattern.shape[-1]
    q = torch.arange(T)[queries]
    q = q[q - offset >= 0]
    return pattern[..., q, q - offset].float().mean(-1).mean(0)


def score_pattern(pattern: torch.Tensor, kind: str, n: int) -> torch.Tensor:
    """Scores [H] of one layer's pattern [B, H, T, T] on repeated tokens (BOS + n + n)."""
    second = slice(n + 1, 2 * n + 1)
    if kind == "previous_token":
        return _diagonal(pattern, 1, slice(1, None))
    if kind == "duplicate_token":
        return _diagonal(pattern, n, second)
    if kind == "induction":
        return _diagonal(pattern, n - 1, second)
    if kind == "sink":
        return pattern[..., 1:, 0].float().mean(-1).mean(0)
    raise ValueError(f"unknown head kind {kind!r}; choose one of {KINDS}")


def head_scores(
    model: Transformer,
    kind: str = "induction",
    *,
    n: int = 50,
    batch: int = 8,
    tokens: torch.Tensor | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Score of every head for `kind`: [n_layers, n_heads]."""
    return all_head_scores(model, n=n, batch=batch, tokens=tokens, seed=seed, kinds=(kind,))[kind]


def all_head_scores(
    model: Transformer,
    *,
    n: int = 50,
    batch: int = 8,
    tokens: torch.Tensor | None = None,
    seed: int = 0,
    kinds: tuple[str, ...] = KINDS,
) -> dict[str, torch.Tensor]:
    """Every detector's scores {kind: [n_layers, n_heads]} from one cached forward."""
    for k in kinds:
        if k not in KINDS:
            raise ValueError(f"unknown head kind {k!r}; choose from {KINDS}")
    if tokens is None:
        tokens = repeated_tokens(model, n, batch, seed=seed)
    elif (tokens.shape[-1] - 1) % 2 or not torch.equal(tokens[:, 1 : n + 1], tokens[:, n + 1 :]):
        raise ValueError(
            f"tokens [B, T={tokens.shape[-1]}] must be BOS + n={n} ids repeated twice; build them with "
            "repeated_tokens(model, n)"
        )
    out = {k: torch.zeros(model.cfg.n_layers, model.cfg.n_heads) for k in kinds}

    def score(pattern: torch.Tensor, hook) -> None:
        layer = int(hook.name.split(".")[1])
        for k in kinds:
            out[k][layer] = score_pattern(pattern, k, n)

    with torch.no_grad():
        # score each layer inside its hook so no pattern outlives its layer
        model.run_with_hooks(
            tokens, fwd_hooks=[(lambda name: name.endswith("attn.hook_pattern"), score)]
        )
    return out


@dataclass(frozen=True)
class Head:
    """One attention head and its detector score."""

    layer: int
    head: int
    score: float

    def __str__(self) -> str:
        return f"L{self.layer}H{self.head} ({self.score:.2f})"


def top_heads(scores: torch.Tensor, k: int = 5) -> list[Head]:
    """The `k` highest-scoring heads of a [layers, heads] score table."""
    flat = scores.flatten()
    vals, idx = flat.topk(min(k, flat.numel()))
    H = scores.shape[1]
    return [Head(int(i) // H, int(i) % H, float(v)) for v, i in zip(vals, idx, strict=True)]


def detect_heads(
    model: Transformer, kind: str = "induction", *, threshold: float = 0.4, **kwargs
) -> list[Head]:
    """Heads whose `kind` score is at least `threshold`, best first."""
    scores = head_scores(model, kind, **kwargs)
    return [h for h in top_heads(scores, scores.numel()) if h.score >= threshold]
