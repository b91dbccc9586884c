"""Inference-time intervention (Li et al. 2023): shift top-K attention heads along a truth direction.

Per head: a linear probe on its output z at the statement's last token separates true from false
statements; the K heads with the best held-out probe accuracy are steered during generation by
alpha * sigma * theta, with theta the (unit) mass-mean difference true - false of that head's
activations and sigma the standard deviation of the activations projected on theta.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from lmlab.errors import InputError
from lmlab.interp.activation_cache import run_with_cache
from lmlab.interp.probes import train_probe
from lmlab.steer.steering_vector import SteeringVector, hook_for
from lmlab.steer.train import read_activations


def load_statements(path: str | Path) -> list[tuple[str, int]]:
    """(text, label 1=true / 0=false) from JSONL ({"text", "label"}) or CSV (text,label columns)."""
    path = Path(path)
    rows: list[dict[str, Any]]
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    elif path.suffix == ".csv":
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    else:
        raise ValueError(f"{path}: statements must be .jsonl or .csv (columns text, label)")
    out = []
    for i, r in enumerate(rows):
        if "text" not in r or "label" not in r:
            raise ValueError(f"{path} row {i}: needs 'text' and 'label' fields, got {sorted(r)}")
        label = str(r["label"]).strip().lower()
        if label not in ("1", "0", "true", "false"):
            raise ValueError(f"{path} row {i}: label {r['label']!r} must be 1/0 or true/false")
        out.append((str(r["text"]), int(label in ("1", "true"))))
    if not out:
        raise ValueError(f"{path} holds no statements")
    return out


def head_activations(
    model: Any, ids: list[list[int]], read_position: int | str = -1, batch_size: int = 16
) -> torch.Tensor:
    """Every head's output z at the read position: [N, n_layers, n_heads, head_dim]."""
    names = [hook_for(i, "z") for i in range(len(model.blocks))]
    acts = read_activations(model, ids, names, read_position, batch_size)
    return torch.stack([acts[n] for n in names], 1)


def probe_accuracies(
    acts: torch.Tensor,
    labels: torch.Tensor,
    *,
    val_frac: float = 0.3,
    seed: int = 0,
    steps: int = 200,
) -> torch.Tensor:
    """Held-out accuracy of a logistic probe per head: [n_layers, n_heads]."""
    if len(set(labels.tolist())) < 2:
        raise ValueError(
            "probe labels hold a single class; give both true (1) and false (0) statements"
        )
    L, H = acts.shape[1:3]
    return torch.tensor(
        [
            [
                train_probe(
                    acts[:, i, h], labels, val_frac=val_frac, seed=seed, steps=steps
                ).val_acc
                for h in range(H)
            ]
            for i in tqdm(range(L), desc="probe heads", leave=False)
        ]
    )


def top_heads(accs: torch.Tensor, k: int) -> list[tuple[int, int]]:
    """The k (layer, head) pairs with the highest accuracy, best first."""
    if not 1 <= k <= accs.numel():
        raise ValueError(f"k={k} must be within 1..{accs.numel()} (layers x heads)")
    flat = accs.flatten().argsort(descending=True)[:k]
    H = accs.shape[1]
    return [(int(i) // H, int(i) % H) for i in flat]


@dataclass
class ITIDirections:
    """Per selected head: unit truth direction theta [head_dim] and sigma along it."""

    heads: list[tuple[int, int]]
    thetas: torch.Tensor  # [K, head_dim]
    sigmas: torch.Tensor  # [K]

    def vector(self, model: Any, alpha: float) -> SteeringVector:
        """alpha * sigma * theta on each selected head's z (zero on the other heads)."""
        H, D = model.cfg.n_heads, model.cfg.head_dim
        per_layer: dict[int, torch.Tensor] = {}
        for (layer, head), th, sg in zip(self.heads, self.thetas, self.sigmas, strict=True):
            v = per_layer.setdefault(layer, torch.zeros(H, D))
            v[head] = alpha * sg * th
        return SteeringVector.from_layers(
            per_layer, hook="z", meta={"method": "iti", "alpha": alpha}
        )


def truth_directions(
    acts: torch.Tensor, labels: torch.Tensor, heads: Sequence[tuple[int, int]]
) -> ITIDirections:
    """Mass-mean shift directions (true minus false) and the activation spread along them."""
    y = labels.bool()
    thetas, sigmas = [], []
    for layer, head in heads:
        x = acts[:, layer, head].float()
        th = x[y].mean(0) - x[~y].mean(0)
        th = th / th.norm().clamp(min=1e-12)
        thetas.append(th)
        sigmas.append((x @ th).std())
    return ITIDirections(list(heads), torch.stack(thetas), torch.stack(sigmas))


@torch.no_grad()
def sequence_logprob(model: Any, ids: list[list[int]], batch_size: int = 16) -> torch.Tensor:
    """Sum of log p(token_t | tokens_<t) over each sequence (the first token is given): [N]."""
    dev = next(model.parameters()).device
    out = []
    for s in range(0, len(ids), batch_size):
        rows = ids[s : s + batch_size]
        T = max(map(len, rows))
        tokens = torch.zeros(len(rows), T, dtype=torch.long)
        mask = torch.zeros(len(rows), T, dtype=torch.long)
        for b, r in enumerate(rows):
            tokens[b, : len(r)], mask[b, : len(r)] = torch.tensor(r), 1
        tokens, mask = tokens.to(dev), mask.to(dev)
        lp = model(tokens, attention_mask=mask)[:, :-1].float().log_softmax(-1)
        tok_lp = lp.gather(-1, tokens[:, 1:, None])[..., 0] * mask[:, 1:]
        out.append(tok_lp.sum(1).cpu())
    return torch.cat(out)


@torch.no_grad()
def perplexity(model: Any, tokens: torch.Tensor) -> float:
    """exp(mean next-token NLL) of one token sequence [T] or batch [B, T]."""
    tokens = tokens.view(-1, tokens.shape[-1]).to(next(model.parameters()).device)
    logits = model(tokens)[:, :-1].float()
    return float(F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:]).exp())


@torch.no_grad()
def answer_logprobs(
    model: Any,
    prompts: Sequence[list[int]],
    answers: Sequence[list[int]],
    *,
    read_heads: bool = False,
    batch_size: int = 16,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(answer | prompt) summed over the answer's tokens: [N]; with `read_heads`, also every
    head's z at the answer's last token from the same forward: [N, n_layers, n_heads, head_dim].

    Rows are batched by length (less padding); results come back in the input order.
    """
    if len(prompts) != len(answers):
        raise InputError(f"{len(prompts)} prompts but {len(answers)} answers; give one of each")
    if any(not p for p in prompts) or any(not a for a in answers):
        raise InputError("every prompt and answer needs at least one token")
    dev = next(model.parameters()).device
    names = [hook_for(i, "z") for i in range(len(model.blocks))]
    seqs = [list(p) + list(a) for p, a in zip(prompts, answers, strict=True)]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    lps = torch.empty(len(seqs))
    acts = None
    for s in tqdm(range(0, len(order), batch_size), desc="answers", leave=False):
        idx = order[s : s + batch_size]
        T = max(len(seqs[i]) for i in idx)
        tokens = torch.zeros(len(idx), T, dtype=torch.long)
        mask = torch.zeros(len(idx), T, dtype=torch.long)
        for b, i in enumerate(idx):
            tokens[b, : len(seqs[i])], mask[b, : len(seqs[i])] = torch.tensor(seqs[i]), 1
        tokens, mask = tokens.to(dev), mask.to(dev)
        kw = {"attention_mask": mask, "return_hidden": True}
        if read_heads:
            hidden, cache = run_with_cache(model, tokens, names_filter=names, **kw)
        else:
            hidden = model(tokens, **kw)
        # the LM head runs only where an answer token is predicted (not on prompts or padding)
        at = [
            (b, t) for b, i in enumerate(idx) for t in range(len(prompts[i]) - 1, len(seqs[i]) - 1)
        ]
        bi, ti = torch.tensor(at, device=dev).T
        logp = model.to_logits(hidden[bi, ti]).float().log_softmax(-1)
        tok_lp = logp.gather(-1, tokens[bi, ti + 1, None])[:, 0].cpu()
        sums = torch.zeros(len(idx)).index_add_(0, bi.cpu(), tok_lp)
        lps[idx] = sums
        if read_heads:
            z = torch.stack([cache[n] for n in names], 2)  # [B, T, L, H, D]
            if acts is None:
                acts = torch.empty(len(seqs), *z.shape[2:])
            last = torch.tensor([len(seqs[i]) - 1 for i in idx], device=z.device)
            acts[idx] = z[torch.arange(len(idx), device=z.device), last].float().cpu()
    return lps, acts


def head_probe_accuracy(
    acts: torch.Tensor,
    labels: torch.Tensor,
    train_idx: Sequence[int],
    val_idx: Sequence[int],
    *,
    steps: int = 200,
    lr: float = 0.05,
    weight_decay: float = 1e-3,
) -> torch.Tensor:
    """Accuracy on `val_idx` of a logistic probe per head fitted on `train_idx`: [n_layers, n_heads].

    The probe recipe of `lmlab.interp.probes.train_probe` (standardized features, zero start,
    AdamW), fitted for all heads at once, with the split given by the caller (e.g. by question).
    """
    tr, va = torch.as_tensor(list(train_idx)), torch.as_tensor(list(val_idx))
    if len(tr) < 2 or len(va) < 1:
        raise InputError(f"{len(tr)} train and {len(va)} val rows; probes need >= 2 and >= 1")
    y = torch.as_tensor(labels).float()
    if len(set(y[tr].tolist())) < 2:
        raise InputError("probe train rows hold a single class; give true and false rows")
    L, H = acts.shape[1:3]
    x = acts.flatten(1, 2).float()  # [N, L*H, D]
    mean, std = x[tr].mean(0), x[tr].std(0).clamp(min=1e-6)
    xs = (x - mean) / std
    w = torch.zeros(x.shape[1:], requires_grad=True)
    b = torch.zeros(x.shape[1], requires_grad=True)
    opt = torch.optim.AdamW([w, b], lr=lr, weight_decay=weight_decay)
    xt, yt = xs[tr], y[tr, None].expand(-1, x.shape[1])
    with torch.enable_grad():
        for _ in range(steps):
            logits = torch.einsum("nhd,hd->nh", xt, w) + b
            # summed over heads: each head's probe gets its own mean-loss gradient
            loss = F.binary_cross_entropy_with_logits(logits, yt, reduction="none").mean(0).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        pred = torch.einsum("nhd,hd->nh", xs[va], w) + b > 0
    return (pred == y[va, None].bool()).float().mean(0).view(L, H)
