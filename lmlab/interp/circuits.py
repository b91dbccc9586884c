"""QK and OV circuits of attention heads, read straight from the weights (Elhage et al. 2021).

Conventions (row vectors, as in the paper's code): a head computes scores
`(LN(x_q) W_Q + b_Q) (LN(x_k) W_K + b_K)^T * scale` and writes `(LN(x_k) W_V + b_V) W_O` for
the key it attends to. The circuit functions below push chosen residual vectors (e.g. token
embeddings) through the layer's real input norm, so they are exact for those vectors; the
weight-matrix forms (`qk_matrix`, `ov_matrix`, composition scores) fold only the norm's gain
and centering and drop its per-token scale and bias.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmlab.model import Transformer


@dataclass(frozen=True)
class HeadWeights:
    """One head's matrices: W_Q, W_K, W_V [d_model, head_dim], W_O [head_dim, d_model], biases."""

    W_Q: torch.Tensor
    W_K: torch.Tensor
    W_V: torch.Tensor
    W_O: torch.Tensor
    b_Q: torch.Tensor | None
    b_K: torch.Tensor | None
    b_V: torch.Tensor | None


def _check_head(model: Transformer, layer: int, head: int) -> None:
    L, H = model.cfg.n_layers, model.cfg.n_heads
    if not 0 <= layer < L:
        raise ValueError(f"layer={layer} is out of range; the model has layers 0..{L - 1}")
    if not 0 <= head < H:
        raise ValueError(f"head={head} is out of range; layer {layer} has heads 0..{H - 1}")


def head_weights(model: Transformer, layer: int, head: int) -> HeadWeights:
    """The weights of head `head` in `layer` (its key/value head under GQA)."""
    _check_head(model, layer, head)
    attn = model.blocks[layer].attn
    D = attn.head_dim
    kv = head // (attn.n_heads // attn.n_kv_heads)
    q_rows, kv_rows = slice(head * D, (head + 1) * D), slice(kv * D, (kv + 1) * D)

    def bias(lin: torch.nn.Linear, rows: slice) -> torch.Tensor | None:
        return None if lin.bias is None else lin.bias[rows].detach()

    return HeadWeights(
        W_Q=attn.q.weight[q_rows].detach().T,
        W_K=attn.k.weight[kv_rows].detach().T,
        W_V=attn.v.weight[kv_rows].detach().T,
        W_O=attn.o.weight[:, q_rows].detach().T,
        b_Q=bias(attn.q, q_rows),
        b_K=bias(attn.k, kv_rows),
        b_V=bias(attn.v, kv_rows),
    )


def _no_rope(model: Transformer, what: str) -> None:
    if model.cfg.positions == "rope":
        raise ValueError(
            f"{what} needs position-free queries and keys, but this model uses positions='rope' "
            "(scores then depend on the query-key distance); read circuits of a model built with "
            "positions='learned' or 'none', or use qk_matrix for the position-free part"
        )


def embed_vectors(
    model: Transformer, tokens: torch.Tensor | None = None, positions: torch.Tensor | None = None
) -> torch.Tensor:
    """Residual vectors [N, d] of `tokens` (default: the whole vocabulary) at the start of the model.

    With learned positions, adds the position embedding of `positions` ([N] or one int), or the
    mean position embedding when `positions` is None.
    """
    if tokens is None:
        tokens = torch.arange(model.cfg.vocab_size)
    tokens = torch.as_tensor(tokens).reshape(-1)
    bad = tokens[(tokens < 0) | (tokens >= model.cfg.vocab_size)]
    if bad.numel():
        raise ValueError(
            f"token id {int(bad[0])} is outside the vocabulary 0..{model.cfg.vocab_size - 1}"
        )
    with torch.no_grad():
        x = model.embed(tokens.to(model.embed.weight.device)).float()
        if model.cfg.embed_scale:
            x = x * model.cfg.d_model**0.5
        if model.pos_embed is not None:
            if positions is None:
                x = x + model.pos_embed.weight.float().mean(0)
            else:
                p = torch.as_tensor(positions, device=x.device).reshape(-1)
                x = x + model.pos_embed(p).float()
    return x


def _project(
    model: Transformer, layer: int, x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None
) -> torch.Tensor:
    blk = model.blocks[layer]
    h = blk.ln1(x.to(W.dtype)) @ W
    return h if b is None else h + b


def qk_circuit(
    model: Transformer, layer: int, head: int, queries: torch.Tensor, keys: torch.Tensor
) -> torch.Tensor:
    """Attention scores [Nq, Nk] (pre-softmax, scaled) of residual vectors queries [Nq, d] on keys [Nk, d]."""
    _check_head(model, layer, head)
    _no_rope(model, "qk_circuit")
    w = head_weights(model, layer, head)
    attn = model.blocks[layer].attn
    with torch.no_grad():
        q = _project(model, layer, queries, w.W_Q, w.b_Q)
        k = _project(model, layer, keys, w.W_K, w.b_K)
        if attn.q_norm is not None:
            q, k = attn.q_norm(q), attn.k_norm(k)
        return (q @ k.T).float() * attn.scale


def ov_circuit(model: Transformer, layer: int, head: int, sources: torch.Tensor) -> torch.Tensor:
    """What the head writes [N, d_model] when it attends fully to each source vector [N, d]."""
    _check_head(model, layer, head)
    w = head_weights(model, layer, head)
    with torch.no_grad():
        return (_project(model, layer, sources, w.W_V, w.b_V) @ w.W_O).float()


def to_logits(model: Transformer, vectors: torch.Tensor) -> torch.Tensor:
    """Direct effect on the logits [N, V] of residual-stream vectors [N, d].

    The final norm is applied linearly: centering (LayerNorm) and gain, not its per-token scale or
    bias, so each row is exact up to a positive factor. Softcapping is ignored.
    """
    if model.unembed is None:
        raise ValueError(
            f"{model.cfg.name} has no unembedding (lm_head=False); nothing to project on"
        )
    with torch.no_grad():
        v = vectors.float()
        ln = model.ln_final
        if ln is not None:  # the norm's own linear part at unit scale
            v = ln.linear(v, torch.ones((), device=v.device))
        return v @ model.unembed.weight.detach().float().T


def full_ov(
    model: Transformer, layer: int, head: int, tokens: torch.Tensor | None = None, positions=None
) -> torch.Tensor:
    """Token -> logit matrix [N, V]: row t is the logit change when the head attends to token t."""
    return to_logits(model, ov_circuit(model, layer, head, embed_vectors(model, tokens, positions)))


def direct_logits(
    model: Transformer, tokens: torch.Tensor | None = None, positions=None
) -> torch.Tensor:
    """The direct path embedding -> unembedding [N, V] (the zero-layer bigram part)."""
    return to_logits(model, embed_vectors(model, tokens, positions))


# ---------------------------------------------------------------------------- weight-matrix forms


def _in_fold(model: Transformer, layer: int) -> torch.Tensor:
    """[d, d] matrix of layer `layer`'s input norm without its scale: centering (LayerNorm) then gain."""
    ln = model.blocks[layer].ln1
    d = model.cfg.d_model
    if ln is None:  # no norm before attention (OLMo 2): the identity
        return torch.eye(d)
    with torch.no_grad():  # row i is the norm's linear part at unit scale applied to e_i
        return ln.linear(torch.eye(d, device=ln.weight.device), torch.ones(())).cpu()


def qk_matrix(model: Transformer, layer: int, head: int) -> torch.Tensor:
    """W_QK [d, d] with score(x_q, x_k) ~ x_q W_QK x_k^T (norm gain folded in, biases dropped)."""
    w = head_weights(model, layer, head)
    n = _in_fold(model, layer)
    return n @ w.W_Q.float() @ w.W_K.float().T @ n.T


def ov_matrix(model: Transformer, layer: int, head: int) -> torch.Tensor:
    """W_OV [d, d] with write(x) ~ x W_OV (norm gain folded in, biases dropped)."""
    w = head_weights(model, layer, head)
    return _in_fold(model, layer) @ w.W_V.float() @ w.W_O.float()


COMPOSITION_KINDS = ("q", "k", "v")


def composition_score(
    model: Transformer, kind: str, earlier: tuple[int, int], later: tuple[int, int]
) -> float:
    """How much head `later`'s Q, K or V input reads head `earlier`'s output (Elhage et al. 2021).

    ||W_QK^T W_OV^T|| (q), ||W_QK W_OV^T|| (k) or ||W_OV W_OV'|| (v), each over the product of
    the two norms (Frobenius). 0 = orthogonal; random matrices give `composition_baseline`.
    """
    if kind not in COMPOSITION_KINDS:
        raise ValueError(f"kind={kind!r}: choose 'q', 'k' or 'v' composition")
    (l1, h1), (l2, h2) = earlier, later
    if l1 >= l2:
        raise ValueError(
            f"earlier head is in layer {l1} and later head in layer {l2}; composition needs "
            "the earlier head in a lower layer"
        )
    ov1 = ov_matrix(model, l1, h1)  # x W_OV1 is what head 1 writes
    right = qk_matrix(model, l2, h2) if kind != "v" else ov_matrix(model, l2, h2)
    if kind == "q":  # head 1 output as the query: (x W_OV1) W_QK2
        m = ov1 @ right
    elif kind == "k":  # head 1 output as the key: W_QK2 (x W_OV1)^T
        m = right @ ov1.T
    else:
        m = ov1 @ right
    return float(m.norm() / (ov1.norm() * right.norm()))


def composition_scores(model: Transformer, kind: str) -> torch.Tensor:
    """Scores [L, H, L, H]: [l2, h2, l1, h1] for every earlier head (l1 < l2); NaN elsewhere."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    out = torch.full((L, H, L, H), float("nan"))
    for l2 in range(L):
        for h2 in range(H):
            for l1 in range(l2):
                for h1 in range(H):
                    out[l2, h2, l1, h1] = composition_score(model, kind, (l1, h1), (l2, h2))
    return out


def composition_baseline(model: Transformer, kind: str, samples: int = 50, seed: int = 0) -> float:
    """Mean composition score of random Gaussian heads with this model's shapes (the chance level)."""
    if kind not in COMPOSITION_KINDS:
        raise ValueError(f"kind={kind!r}: choose 'q', 'k' or 'v' composition")
    d, D = model.cfg.d_model, model.cfg.head_dim
    g = torch.Generator().manual_seed(seed)

    def low_rank() -> torch.Tensor:
        return torch.randn(d, D, generator=g) @ torch.randn(D, d, generator=g)

    vals = []
    for _ in range(samples):
        ov1, right = low_rank(), low_rank()
        m = right @ ov1.T if kind == "k" else ov1 @ right
        vals.append(float(m.norm() / (ov1.norm() * right.norm())))
    return sum(vals) / len(vals)


# ---------------------------------------------------------------------------- reading matrices


def diagonal_stats(m: torch.Tensor, rows: slice | None = None) -> dict[str, float]:
    """How diagonal a square matrix [N, N] is (over `rows` only, if given): row argmax on the
    diagonal, diagonal minus the row's largest other entry (margin), diagonal z-score in its row."""
    if m.dim() != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"diagonal_stats needs a square matrix, got shape {tuple(m.shape)}")
    m = m.float()
    N = m.shape[0]
    eye = torch.eye(N, dtype=torch.bool)
    idx = torch.arange(N)[rows if rows is not None else slice(None)]
    if idx.numel() == 0:
        raise ValueError(f"rows={rows} selects no rows of a {N} x {N} matrix")
    diag = m.diagonal()[idx]
    margin = diag - m.masked_fill(eye, float("-inf")).max(1).values[idx]
    off_vals = m[~eye].view(N, N - 1)[idx]
    z = (diag - off_vals.mean(1)) / off_vals.std(1).clamp_min(1e-12)
    return {
        "row_argmax_on_diagonal": float((m.argmax(1)[idx] == idx).float().mean()),
        "mean_margin": float(margin.mean()),
        "min_margin": float(margin.min()),
        "mean_diag": float(diag.mean()),
        "mean_offdiag": float(off_vals.mean()),
        "mean_diag_z": float(z.mean()),
    }


def rank_correlation(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors (ties broken by order)."""
    if x.shape != y.shape or x.dim() != 1 or x.numel() < 2:
        raise ValueError(
            f"rank_correlation needs two 1-D tensors of the same length >= 2, got "
            f"{tuple(x.shape)} and {tuple(y.shape)}"
        )
    rx = x.float().argsort().argsort().float()
    ry = y.float().argsort().argsort().float()
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / (rx.norm() * ry.norm()))
