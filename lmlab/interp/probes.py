"""Linear probes: logistic regression on cached activations, accuracy per layer or per head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from lmlab.interp.activation_cache import hook_name, run_with_cache
from lmlab.model import Transformer


@dataclass
class ProbeResult:
    """A fitted probe and its accuracy on the training and held-out split."""

    train_acc: float
    val_acc: float
    weight: torch.Tensor  # [classes, d] on standardized features
    bias: torch.Tensor  # [classes]


def collect(
    model: Transformer,
    tokens: torch.Tensor,
    names: list[str],
    *,
    pos: int | str = -1,
    attention_mask: torch.Tensor | None = None,
    batch_size: int = 32,
) -> dict[str, torch.Tensor]:
    """Activations at `names` for each sequence: [N, ...] at position `pos` or averaged ("mean")."""
    out: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    for start in tqdm(range(0, tokens.shape[0], batch_size), desc="collect", leave=False):
        sl = slice(start, start + batch_size)
        mask = attention_mask[sl] if attention_mask is not None else None
        _, cache = run_with_cache(
            model, tokens[sl], attention_mask=mask, names_filter=names, stop_at_layer="auto"
        )
        for n in names:
            act = cache[n]  # [B, T, ...]
            if pos == "mean":
                w = (mask if mask is not None else torch.ones(act.shape[:2])).to(act.dtype)
                w = w.view(*w.shape, *([1] * (act.dim() - 2)))
                act = (act * w).sum(1) / w.sum(1)
            elif mask is not None and pos == -1:  # last real token of right-padded rows
                last = mask.long().sum(1) - 1
                act = act[torch.arange(act.shape[0]), last]
            else:
                act = act[:, pos]
            out[n].append(act.float().cpu())
    return {n: torch.cat(v) for n, v in out.items()}


def train_probe(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    val_frac: float = 0.25,
    steps: int = 300,
    lr: float = 0.05,
    weight_decay: float = 1e-3,
    seed: int = 0,
) -> ProbeResult:
    """Fit multinomial logistic regression on x [N, d] -> labels y [N]; report train/val accuracy."""
    x = x.reshape(x.shape[0], -1).float()
    y = torch.as_tensor(y).long()
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{x.shape[0]} activation rows but {y.shape[0]} labels; pass one label per sequence"
        )
    n_val = round(x.shape[0] * val_frac)
    if n_val < 1 or x.shape[0] - n_val < 2:
        raise ValueError(f"{x.shape[0]} examples are too few for val_frac={val_frac}; collect more")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(x.shape[0], generator=g)
    tr, va = perm[n_val:], perm[:n_val]
    mean, std = x[tr].mean(0), x[tr].std(0).clamp(min=1e-6)
    xs = (x - mean) / std
    k = int(y.max()) + 1
    lin = torch.nn.Linear(x.shape[1], k)
    torch.nn.init.zeros_(lin.weight)  # the loss is convex: a zero start makes the fit reproducible
    torch.nn.init.zeros_(lin.bias)
    opt = torch.optim.AdamW(lin.parameters(), lr=lr, weight_decay=weight_decay)
    with torch.enable_grad():
        for _ in range(steps):
            loss = F.cross_entropy(lin(xs[tr]), y[tr])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        pred = lin(xs).argmax(-1)
    acc = (pred == y).float()
    return ProbeResult(
        float(acc[tr].mean()), float(acc[va].mean()), lin.weight.detach(), lin.bias.detach()
    )


def probe_layers(
    model: Transformer,
    tokens: torch.Tensor,
    labels: torch.Tensor,
    *,
    kind: str = "resid_post",
    pos: int | str = -1,
    attention_mask: torch.Tensor | None = None,
    **fit,
) -> torch.Tensor:
    """Held-out accuracy of a probe on `kind` at every layer: [n_layers]."""
    names = [hook_name(model, kind, i) for i in range(model.cfg.n_layers)]
    acts = collect(model, tokens, names, pos=pos, attention_mask=attention_mask)
    return torch.tensor([train_probe(acts[n], labels, **fit).val_acc for n in names])


def probe_heads(
    model: Transformer,
    tokens: torch.Tensor,
    labels: torch.Tensor,
    *,
    pos: int | str = -1,
    attention_mask: torch.Tensor | None = None,
    **fit,
) -> torch.Tensor:
    """Held-out accuracy of a probe on each head's output z: [n_layers, n_heads]."""
    names = [hook_name(model, "z", i) for i in range(model.cfg.n_layers)]
    acts = collect(model, tokens, names, pos=pos, attention_mask=attention_mask)  # [N, H, D]
    return torch.tensor(
        [
            [train_probe(acts[n][:, h], labels, **fit).val_acc for h in range(model.cfg.n_heads)]
            for n in names
        ]
    )
