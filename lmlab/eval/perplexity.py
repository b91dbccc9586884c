"""Perplexity of a causal LM over a long text: sliding windows, each token scored exactly once.

A window of `context` tokens starts every `stride` tokens. Only the tokens not scored by an
earlier window are scored, so each of them sees at least `context - stride` tokens of history
(the approach of the Hugging Face perplexity guide). `stride = context - 1` scores each token
once with no overlap beyond the one token of history the first target needs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lmlab.tokenizers.base import Tokenizer


@dataclass(frozen=True)
class PerplexityResult:
    """exp(nll); `nll` is the mean negative log-likelihood (nats) over the `n_tokens` scored tokens."""

    ppl: float
    nll: float
    n_tokens: int
    context: int
    stride: int


@dataclass(frozen=True)
class Window:
    """Tokens `[begin, end)` go into the model; targets `[first, end)` are scored."""

    begin: int
    end: int
    first: int


def sliding_windows(n: int, context: int, stride: int) -> list[Window]:
    """Windows over `n` tokens that score every token from position 1 on exactly once."""
    if context < 2:
        raise ValueError(
            f"context={context} is too short; use at least 2 tokens (typically 512-2048)"
        )
    if not 0 < stride < context:
        raise ValueError(
            f"stride={stride} must be in 1..{context - 1} (below context={context}): each window needs one "
            f"token of history before its first target; stride={context - 1} gives non-overlapping windows"
        )
    windows, scored_to = [], 1  # position 0 has no history, so it is never a target
    for begin in range(0, n, stride):
        end = min(begin + context, n)
        if end > scored_to:
            windows.append(Window(begin, end, scored_to))
            scored_to = end
        if end == n:
            break
    return windows


def logits_of(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """`model(tokens)` as a logits tensor (lmlab models return it; transformers wraps it in `.logits`)."""
    out = model(tokens)
    return out.logits if hasattr(out, "logits") else out


def _device(model: Any, device: Any) -> torch.device:
    if device is not None:
        return torch.device(device)
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _ids(tokenizer_or_ids: Tokenizer | Sequence[int] | torch.Tensor, text: str | None) -> list[int]:
    if isinstance(tokenizer_or_ids, Tokenizer):
        if text is None:
            raise ValueError("perplexity(model, tokenizer, text): the text to score is missing")
        return tokenizer_or_ids.encode(text, add_special=True)
    if text is not None:
        raise ValueError("pass either a tokenizer and a text, or token ids without a text")
    if isinstance(tokenizer_or_ids, torch.Tensor):
        return tokenizer_or_ids.flatten().tolist()
    return [int(i) for i in tokenizer_or_ids]


@torch.inference_mode()
def perplexity(
    model: Any,
    tokenizer_or_ids: Tokenizer | Sequence[int] | torch.Tensor,
    text: str | None = None,
    *,
    context: int | None = None,
    stride: int | None = None,
    batch_size: int = 4,
    device: Any = None,
    progress: bool = True,
) -> PerplexityResult:
    """Perplexity of `model` on `text` (tokenized with BOS when the tokenizer adds one) or on ids.

    `context` defaults to min(model's max_seq_len, 1024), `stride` to context // 2.
    """
    ids = _ids(tokenizer_or_ids, text)
    if len(ids) < 2:
        raise ValueError(f"perplexity needs at least 2 tokens, got {len(ids)}; pass a longer text")
    cfg = getattr(model, "cfg", None)
    max_len = getattr(cfg, "max_seq_len", None) or 1024
    context = context or min(max_len, 1024)
    if context > max_len:
        raise ValueError(
            f"context={context} exceeds the model's max_seq_len={max_len}; pass context <= {max_len}"
        )
    stride = stride or max(context // 2, 1)
    vocab = getattr(cfg, "vocab_size", None)
    if vocab is not None and max(ids) >= vocab:
        raise ValueError(
            f"token id {max(ids)} >= the model's vocab_size {vocab}: the tokenizer does not belong to this model"
        )
    dev = _device(model, device)
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    windows = sliding_windows(len(ids), context, stride)
    all_ids = torch.tensor(ids, dtype=torch.long)
    nll_sum, n_scored = 0.0, 0
    try:
        for k in tqdm(range(0, len(windows), batch_size), desc="perplexity", disable=not progress):
            batch = windows[k : k + batch_size]
            width = max(w.end - w.begin for w in batch)
            # right-padded: causal, harmless
            tokens = torch.zeros(len(batch), width, dtype=torch.long)
            for r, w in enumerate(batch):
                tokens[r, : w.end - w.begin] = all_ids[w.begin : w.end]
            logits = logits_of(model, tokens.to(dev))
            for r, w in enumerate(batch):
                # logits at position t predict token t + 1
                pred = logits[r, w.first - 1 - w.begin : w.end - 1 - w.begin].float()
                target = all_ids[w.first : w.end].to(dev)
                nll_sum += F.cross_entropy(pred, target, reduction="sum").item()
                n_scored += w.end - w.first
    finally:
        if was_training:
            model.train()
    nll = nll_sum / n_scored
    return PerplexityResult(
        ppl=math.exp(nll), nll=nll, n_tokens=n_scored, context=context, stride=stride
    )
