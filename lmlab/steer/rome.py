"""ROME-style rank-one MLP edit (Meng et al. 2022), reimplemented from the paper.

The MLP's down projection W at `layer` is read as a key-value memory: the key k* is the MLP's
hidden activation at the subject's last token; the value v* is found by optimizing what that MLP
should output there so the model predicts the new answer. The rank-one update
    W += (v* - W k*) (C^-1 k*)^T / (k*^T C^-1 k*),   C = E[k k^T] over a text corpus,
writes v* for k* while disturbing other keys as little as possible under C.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from lmlab.interp.activation_cache import run_with_cache
from lmlab.steer.edit import find_subject


def _down(model: Any, layer: int) -> torch.nn.Linear:
    n = len(model.blocks)
    if not 0 <= layer < n:
        raise ValueError(f"layer={layer} is outside 0..{n - 1} for this {n}-layer model")
    mlp = model.blocks[layer].mlp
    down = getattr(mlp, "down", None)
    if not isinstance(down, torch.nn.Linear):
        raise ValueError(
            f"ROME edits a dense MLP's down projection; layer {layer} of {model.cfg.name} has "
            f"{type(mlp).__name__} (mixture-of-experts or attention-only): use injection_edit instead"
        )
    if model.cfg.sandwich_norm or model.cfg.post_norm:
        raise ValueError(
            f"{model.cfg.name} normalizes the MLP output (sandwich/post norm), so the MLP output is "
            "not W k + b and this ROME cannot solve for W; use injection_edit instead"
        )
    return down


@torch.no_grad()
def key_covariance(
    model: Any, batches: Iterable[torch.Tensor], layer: int, max_tokens: int = 20_000
) -> torch.Tensor:
    """C = E[k k^T] [d_ff, d_ff] of the MLP hidden activation at `layer` over corpus token batches."""
    _down(model, layer)
    name = f"blocks.{layer}.mlp.hook_post"
    dev = next(model.parameters()).device
    total, n = None, 0
    for tokens in tqdm(batches, desc="key covariance", leave=False):
        _, cache = run_with_cache(model, tokens.to(dev), names_filter=name, stop_at_layer="auto")
        k = cache[name].reshape(-1, cache[name].shape[-1]).double()
        total = k.T @ k if total is None else total + k.T @ k
        n += k.shape[0]
        if n >= max_tokens:
            break
    if total is None:
        raise ValueError("no corpus batches were given; pass token batches [B, T]")
    return (total / n).float()


@dataclass
class RomeEdit:
    """An applied rank-one edit; `restore()` puts the original weight back."""

    down: torch.nn.Linear
    original: torch.Tensor
    key: torch.Tensor  # k* [d_ff]
    delta: torch.Tensor  # v* - W k* [d_model]
    losses: list[float]

    def restore(self) -> None:
        """Undo the edit."""
        with torch.no_grad():
            self.down.weight.copy_(self.original)


def _pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(map(len, rows))
    tokens = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for b, r in enumerate(rows):
        tokens[b, : len(r)], mask[b, : len(r)] = torch.tensor(r), 1
    return tokens, mask


def rome_edit(
    model: Any,
    prompts: Sequence[Sequence[int]],
    subject: Sequence[int],
    target: int,
    layer: int,
    cov: torch.Tensor,
    *,
    essence: Sequence[Sequence[int]] = (),
    steps: int = 30,
    lr: float = 0.5,
    kl_weight: float = 0.0625,
    decay: float = 0.5,
    ridge: float = 1e-2,
) -> RomeEdit:
    """Edit `model` in place so each prompt (containing `subject`) predicts token `target` next.

    `prompts` should include the fact prompt under a few context prefixes (ROME averages the key
    over them); `essence` prompts (e.g. "Eiffel Tower is a") are kept close to the original by a KL
    term; `decay` penalizes |delta| relative to |v0|; `ridge` * mean(diag C) regularizes C^-1.
    """
    down = _down(model, layer)
    if not prompts:
        raise ValueError("prompts is empty; give at least the fact prompt")
    dev = next(model.parameters()).device
    rows = [list(p) for p in prompts]
    last = []
    for r in rows:
        hits = find_subject(r, subject)
        if not hits:
            raise ValueError(
                "a ROME prompt does not contain the subject's tokens; encode both alike"
            )
        last.append(hits[-1])
    tokens, mask = (t.to(dev) for t in _pad(rows))
    ends = mask.sum(1) - 1
    idx = torch.arange(len(rows), device=dev)
    post, out_name = f"blocks.{layer}.mlp.hook_post", f"blocks.{layer}.hook_mlp_out"
    subj = torch.tensor(last, device=dev)

    _, cache = run_with_cache(model, tokens, attention_mask=mask, names_filter=[post, out_name])
    keys = cache[post][idx, subj].float()  # [N, d_ff]
    k_star = keys.mean(0)
    v0 = cache[out_name][idx, subj].float().mean(0)
    ess = [list(e) for e in essence]
    if ess:
        e_tok, e_mask = (t.to(dev) for t in _pad(ess))
        e_ends = e_mask.sum(1) - 1
        e_subj = torch.tensor([find_subject(e, subject)[-1] for e in ess], device=dev)
        with torch.no_grad():
            e_ref = (
                model(e_tok, attention_mask=e_mask)[torch.arange(len(ess)), e_ends]
                .float()
                .log_softmax(-1)
            )

    delta = torch.zeros_like(v0, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=lr)
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    losses = []

    def add_at(positions: torch.Tensor) -> Any:
        def fn(act: torch.Tensor, hook: Any) -> torch.Tensor:
            sel = torch.zeros(act.shape[:2], device=act.device, dtype=act.dtype)
            sel[torch.arange(act.shape[0]), positions] = 1
            return act + sel[..., None] * delta

        return fn

    try:
        for _ in tqdm(range(steps), desc="rome v*", leave=False):
            with torch.enable_grad():
                logits = model.run_with_hooks(
                    tokens, attention_mask=mask, fwd_hooks=[(out_name, add_at(subj))]
                )
                nll = F.cross_entropy(logits[idx, ends].float(), torch.full_like(ends, target))
                loss = nll + decay * delta.pow(2).sum() / v0.pow(2).sum()
                if ess:
                    e_logits = model.run_with_hooks(
                        e_tok, attention_mask=e_mask, fwd_hooks=[(out_name, add_at(e_subj))]
                    )
                    e_lp = e_logits[torch.arange(len(ess)), e_ends].float().log_softmax(-1)
                    loss = loss + kl_weight * F.kl_div(
                        e_lp, e_ref, log_target=True, reduction="batchmean"
                    )
                opt.zero_grad()
                loss.backward()
            opt.step()
            losses.append(float(nll.detach()))
    finally:
        for p, f in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(f)

    with torch.no_grad():
        c = cov.to(dev).double()
        c = c + ridge * c.diagonal().mean() * torch.eye(c.shape[0], device=dev, dtype=c.dtype)
        u = torch.linalg.solve(c, k_star.double())  # C^-1 k*
        resid = delta.detach().double()  # v* - W k*: v0 = mean(W k_i + b) = W k* + b (linear)
        original = down.weight.detach().clone()
        update = torch.outer(resid, u) / (k_star.double() @ u)
        down.weight.add_(update.to(down.weight.dtype))
    return RomeEdit(down, original, k_star, resid.float(), losses)
