"""Steering vectors from contrastive pairs: mean-difference, PCA and logistic aggregators."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from lmlab.interp.activation_cache import run_with_cache
from lmlab.steer.steering_vector import SteeringVector, hook_for

Aggregator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Text = str | Sequence[int]


def mean_aggregator(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Mean of the paired differences (Turner et al., repeng's mean_diff)."""
    return (pos - neg).mean(0)


def _scaled_like_mean(
    direction: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor
) -> torch.Tensor:
    """Unit `direction`, signed and scaled to the mean difference's projection on it."""
    unit = direction / direction.norm().clamp(min=1e-12)
    proj = float((pos - neg).mean(0) @ unit)
    return unit * proj


def pca_aggregator(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """First principal direction of the (uncentered) paired differences, mean-diff scale."""
    _, _, vh = torch.linalg.svd((pos - neg).double(), full_matrices=False)
    return _scaled_like_mean(vh[0].float(), pos, neg)


def logistic_aggregator(
    pos: torch.Tensor, neg: torch.Tensor, *, steps: int = 200, l2: float = 1e-2
) -> torch.Tensor:
    """Normal of a logistic-regression boundary between pos and neg activations, mean-diff scale."""
    x = torch.cat([pos, neg]).double()
    y = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))]).double()
    mu, sd = x.mean(0), x.std(0).clamp(min=1e-6)
    xs = (x - mu) / sd
    w = torch.zeros(x.shape[1], dtype=torch.double, requires_grad=True)
    b = torch.zeros((), dtype=torch.double, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(xs @ w + b, y) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return _scaled_like_mean((w.detach() / sd).float(), pos, neg)  # back to raw coordinates


AGGREGATORS: dict[str, Aggregator] = {
    "mean": mean_aggregator,
    "pca": pca_aggregator,
    "logistic": logistic_aggregator,
}


def _ids(texts: Sequence[Text], tokenizer: Any) -> list[list[int]]:
    out = []
    for t in texts:
        if isinstance(t, str):
            if tokenizer is None:
                raise ValueError("text pairs need a tokenizer: pass tokenizer=...")
            t = tokenizer.encode(t)
        if len(t) == 0:
            raise ValueError("a pair member is empty; every text needs at least one token")
        out.append(list(t))
    return out


@torch.no_grad()
def read_activations(
    model: Any,
    ids: list[list[int]],
    names: list[str],
    read_position: int | str = -1,
    batch_size: int = 16,
) -> dict[str, torch.Tensor]:
    """Activations at `names` per sequence: at `read_position` (from the end if negative) or "mean"."""
    out: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    for s in tqdm(range(0, len(ids), batch_size), desc="activations", leave=False):
        rows = ids[s : s + batch_size]
        T = max(map(len, rows))
        tokens = torch.zeros(len(rows), T, dtype=torch.long)  # padding is masked out
        mask = torch.zeros(len(rows), T, dtype=torch.long)
        for b, r in enumerate(rows):
            tokens[b, : len(r)], mask[b, : len(r)] = torch.tensor(r), 1
        dev = next(model.parameters()).device
        _, cache = run_with_cache(
            model,
            tokens.to(dev),
            attention_mask=mask.to(dev),
            names_filter=names,
            stop_at_layer="auto",
        )
        lengths = mask.sum(1)
        for n in names:
            act = cache[n].float().cpu()
            if read_position == "mean":
                w = mask.float().view(*mask.shape, *([1] * (act.dim() - 2)))
                out[n].append((act * w).sum(1) / w.sum(1))
            else:
                p = int(read_position)
                idx = lengths + p if p < 0 else torch.full_like(lengths, p)
                if bool((idx < 0).any() | (idx >= lengths).any()):
                    raise ValueError(
                        f"read_position={p} is outside a sequence of {int(lengths.min())} tokens"
                    )
                out[n].append(act[torch.arange(len(rows)), idx])
    return {n: torch.cat(v) for n, v in out.items()}


def train_steering_vector(
    model: Any,
    pairs: Sequence[tuple[Text, Text]],
    layers: int | Sequence[int],
    *,
    tokenizer: Any = None,
    hook: str = "resid_pre",
    aggregator: str | Aggregator = "mean",
    read_position: int | str = -1,
    batch_size: int = 16,
) -> SteeringVector:
    """One vector per layer from (positive, negative) pairs: aggregate the activation differences."""
    if not pairs:
        raise ValueError("pairs is empty; give at least one (positive, negative) pair of texts")
    if any(not isinstance(p, (tuple, list)) or len(p) != 2 for p in pairs):
        raise ValueError("each pair must be a (positive, negative) tuple of two texts")
    layers = [layers] if isinstance(layers, int) else list(layers)
    n = len(model.blocks)
    bad = [i for i in layers if not 0 <= i < n]
    if not layers or bad:
        raise ValueError(f"layers={layers} must be non-empty and within 0..{n - 1} for this model")
    agg = AGGREGATORS.get(aggregator) if isinstance(aggregator, str) else aggregator
    if agg is None:
        raise ValueError(
            f"aggregator={aggregator!r} is unknown; use {', '.join(AGGREGATORS)} or a function"
        )
    names = [hook_for(i, hook) for i in layers]
    pos_ids = _ids([p for p, _ in pairs], tokenizer)
    neg_ids = _ids([q for _, q in pairs], tokenizer)
    acts = read_activations(model, pos_ids + neg_ids, names, read_position, batch_size)
    k = len(pairs)
    vectors = {nm: agg(acts[nm][:k], acts[nm][k:]) for nm in names}
    name = aggregator if isinstance(aggregator, str) else getattr(aggregator, "__name__", "custom")
    return SteeringVector(vectors, meta={"aggregator": name, "pairs": k})
