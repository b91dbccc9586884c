"""Lenses: decode the residual stream at any layer into next-token logits.

A lens is any callable `lens(resid [..., d], layer) -> logits [..., vocab]`. `LogitLens` applies
the model's final norm and unembedding (nostalgebraist 2020); `TunedLens` first applies a learned
per-layer affine translator (Belrose et al. 2023) and can be fitted with `fit_tuned_lens`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from lmlab.interp.activation_cache import run_with_cache
from lmlab.model import Transformer


class Lens(Protocol):
    """Maps the residual stream entering `layer` (n_layers = the final residual) to logits."""

    def __call__(self, resid: torch.Tensor, layer: int) -> torch.Tensor: ...


def _check_lm(model: Transformer) -> None:
    if model.unembed is None or model.ln_final is None:
        raise ValueError(
            f"{model.cfg.name} has no final norm + LM head, so a logit lens cannot decode it; "
            "use a decoder model (or probes for encoders)"
        )


def unembed(model: Transformer, resid: torch.Tensor) -> torch.Tensor:
    """Final norm + unembedding (+ final softcap) of a residual stream [..., d]."""
    _check_lm(model)
    return model.to_logits(model.ln_final(resid))


class LogitLens:
    """The logit lens: every layer decoded with the model's own final norm and unembedding."""

    def __init__(self, model: Transformer) -> None:
        _check_lm(model)
        self.model = model

    def __call__(self, resid: torch.Tensor, layer: int) -> torch.Tensor:
        return unembed(self.model, resid)


class TunedLens(nn.Module):
    """Logit lens after a learned affine map per layer, initialized to the identity."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        _check_lm(model)
        self.model = [model]  # a list keeps the model's parameters out of this module's
        d, n = model.cfg.d_model, model.cfg.n_layers
        self.translators = nn.ModuleList(nn.Linear(d, d) for _ in range(n))
        for t in self.translators:
            nn.init.zeros_(t.weight)
            nn.init.zeros_(t.bias)

    def forward(self, resid: torch.Tensor, layer: int) -> torch.Tensor:
        if layer < len(self.translators):
            resid = resid + self.translators[layer](resid)
        return unembed(self.model[0], resid)


def fit_tuned_lens(
    lens: TunedLens, batches: Iterable[torch.Tensor], *, steps: int = 100, lr: float = 1e-3
) -> list[float]:
    """Train the translators so each layer's decoded distribution matches the final one (KL)."""
    model = lens.model[0]
    opt = torch.optim.Adam(lens.translators.parameters(), lr=lr)
    n = model.cfg.n_layers
    names = [f"blocks.{i}.hook_resid_pre" for i in range(n)]
    losses: list[float] = []
    it = iter(batches)
    for _ in tqdm(range(steps), desc="tuned lens", leave=False):
        try:
            tokens = next(it)
        except StopIteration:
            it = iter(batches)
            tokens = next(it)
        logits, cache = run_with_cache(model, tokens, names_filter=names)
        target = F.log_softmax(logits.float(), -1)
        loss = (
            sum(
                F.kl_div(
                    F.log_softmax(lens(cache["resid_pre", i], i).float(), -1),
                    target,
                    log_target=True,
                    reduction="batchmean",
                )
                for i in range(n)
            )
            / n
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def layer_logits(
    model: Transformer, tokens: torch.Tensor, lens: Lens | None = None, pos: int | slice = -1
) -> torch.Tensor:
    """Lens logits of every layer: [n_layers + 1, B, (T,) vocab] (row i = residual entering block i,
    the last row = the final residual, whose logit-lens decoding equals the model's output)."""
    lens = lens or LogitLens(model)
    n = model.cfg.n_layers
    names = [f"blocks.{i}.hook_resid_pre" for i in range(n)] + [f"blocks.{n - 1}.hook_resid_post"]
    with torch.no_grad():
        _, cache = run_with_cache(model, tokens, names_filter=names)
        resids = cache.accumulated_resid(pos_slice=pos)
        return torch.stack([lens(resids[i], i) for i in range(n + 1)])


@dataclass
class LensTable:
    """Top-k decoded tokens per layer at one position, and the probability of a target token."""

    layers: list[str]  # row labels
    top_ids: torch.Tensor  # [n_layers + 1, k]
    top_probs: torch.Tensor  # [n_layers + 1, k]
    target_id: int
    target_probs: torch.Tensor  # [n_layers + 1]
    target_ranks: torch.Tensor  # [n_layers + 1]


def lens_table(
    model: Transformer,
    tokens: torch.Tensor,
    *,
    lens: Lens | None = None,
    pos: int = -1,
    k: int = 5,
    target: int | None = None,
) -> LensTable:
    """Logit-lens table of one sequence at `pos`; `target` defaults to the model's own prediction."""
    if tokens.dim() == 1:
        tokens = tokens[None]
    if tokens.shape[0] != 1:
        raise ValueError(
            f"lens_table reads one sequence; got a batch of {tokens.shape[0]}: pass tokens[:1]"
        )
    logits = layer_logits(model, tokens, lens, pos)[:, 0].float()  # [L+1, V]
    probs = logits.softmax(-1)
    target = int(logits[-1].argmax()) if target is None else int(target)
    top_probs, top_ids = probs.topk(k, -1)
    ranks = (logits > logits[:, target : target + 1]).sum(-1)
    labels = [f"L{i}" for i in range(model.cfg.n_layers)] + ["out"]
    return LensTable(labels, top_ids, top_probs, target, probs[:, target], ranks)


def describe(table: LensTable, decode: Any) -> str:
    """Markdown table of a `LensTable`; `decode(id) -> str` names tokens."""
    rows = ["| layer | top tokens | p(target) | rank |", "|---|---|---|---|"]
    for i, label in enumerate(table.layers):
        tops = ", ".join(
            f"{decode(int(t))!r} {float(p):.2f}"
            for t, p in zip(table.top_ids[i], table.top_probs[i], strict=True)
        )
        rows.append(
            f"| {label} | {tops} | {float(table.target_probs[i]):.3f} | {int(table.target_ranks[i])} |"
        )
    return "\n".join(rows)
