"""Judge a sparse pattern on a sentence encoder: embeddings, their cosine to dense, a linear probe."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from lmlab.sparse.apply import sparse_attention
from lmlab.sparse.masks import SparsePattern, attended_fraction, layer_schedule


@dataclass
class Encoded:
    """Unit-norm mean-pooled sentence embeddings [N, d] and the attention cost vs dense (0..1]."""

    emb: torch.Tensor
    cost: float


@torch.inference_mode()
def sentence_embeddings(
    model: nn.Module,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    *,
    pattern: SparsePattern | None = None,
    schedule: str | Sequence[bool] = "all",
    kernel: bool = False,
    progress: bool = False,
) -> Encoded:
    """Encode padded (tokens [B, T], pad [B, T]) batches; sparse layers follow `pattern`.

    Embeddings are sentence-transformers style: the mean of the last hidden states over real
    tokens, L2-normalized. cost = attended (query, key) pairs over dense pairs, all layers.
    """
    sparse = layer_schedule(schedule, len(model.blocks)) if pattern is not None else None
    embs, kept, total = [], 0.0, 0.0
    for tokens, pad in tqdm(batches, desc="encode", disable=not progress, mininterval=2.0):
        real = float(pad.sum(1).pow(2).sum())
        total += real * len(model.blocks)
        if pattern is None:
            hidden = model(tokens, attention_mask=pad, return_hidden=True)
            kept += real * len(model.blocks)
        else:
            with sparse_attention(
                model, tokens, pattern, sparse, attention_mask=pad, kernel=kernel
            ):
                hidden = model(tokens, attention_mask=pad, return_hidden=True)
            frac = attended_fraction(pattern.mask(tokens, pad), pad)
            kept += real * (sum(sparse) * frac + (len(sparse) - sum(sparse)))
        w = pad.unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * w).sum(1) / w.sum(1)
        embs.append(torch.nn.functional.normalize(mean.float(), dim=-1))
    return Encoded(torch.cat(embs), kept / total)


def pad_batches(
    ids: Sequence[Sequence[int]], batch_size: int, pad_id: int = 0
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """Group sequences of similar length into padded batches; returns them and the order used."""
    order = torch.tensor(sorted(range(len(ids)), key=lambda i: len(ids[i])), dtype=torch.long)
    batches = []
    for s in range(0, len(order), batch_size):
        chunk = [ids[i] for i in order[s : s + batch_size].tolist()]
        T = max(len(c) for c in chunk)
        tokens = torch.full((len(chunk), T), pad_id, dtype=torch.long)
        pad = torch.zeros(len(chunk), T, dtype=torch.bool)
        for r, c in enumerate(chunk):
            tokens[r, : len(c)] = torch.tensor(c)
            pad[r, : len(c)] = True
        batches.append((tokens, pad))
    return batches, order


def logistic_accuracy(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    l2: float = 1e-3,
    iters: int = 200,
) -> float:
    """Test accuracy of an L2-regularized logistic regression fit with L-BFGS on standardized features."""
    mu, sd = x_train.mean(0), x_train.std(0).clamp_min(1e-6)
    xtr, xte = (x_train - mu) / sd, (x_test - mu) / sd
    w = torch.zeros(xtr.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=iters, line_search_fn="strong_wolfe")
    y = y_train.float()

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(xtr @ w + b, y) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return float(((xte @ w + b > 0).long() == y_test).float().mean())
