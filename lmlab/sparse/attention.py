"""Window + sink attention that only computes the kept (query, key) pairs.

Queries are cut into blocks of `block` rows. A block's keys are its own span widened by
`window` on each side (one batched matmul over all blocks), plus the sink keys gathered once.
Cost per query: block + 2 * window + n_sinks keys instead of T, so long sequences get cheaper
linearly instead of quadratically. Same result as a masked dense softmax with
`SparsePattern.mask` (tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def local_sink_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    window: int,
    sinks: torch.Tensor | None = None,
    pad: torch.Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    block: int = 128,
) -> torch.Tensor:
    """q: [B, H, T, D], k/v: [B, KV, T, D] -> [B, H, T, D].

    window: neighbours on each side (causal: before) besides the token itself; sinks: bool [B, T]
    keys every query sees; pad: bool [B, T] real tokens (padding keys are hidden, a padded query
    sees itself). KV < H (grouped-query attention) is allowed.
    """
    B, H, T, D = q.shape
    if k.shape[-2] != T or v.shape[-2] != T or H % k.shape[1]:
        raise ValueError(
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}: need self-attention over "
            "the same T and n_heads a multiple of n_kv_heads"
        )
    if window < 0 or block < 1:
        raise ValueError(f"window={window} must be >= 0 and block={block} >= 1")
    if k.shape[1] != H:
        rep = H // k.shape[1]
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    scale = D**-0.5 if scale is None else scale
    dev = q.device
    nb = -(-T // block)
    Tq = nb * block
    key_ok = pad.bool() if pad is not None else torch.ones(B, T, dtype=torch.bool, device=dev)

    # Band: block b's keys are positions [b*block - window, (b+1)*block + window).
    left, right = window, Tq - T + window
    L = block + 2 * window
    kb = F.pad(k, (0, 0, left, right)).unfold(2, L, block)  # [B, H, nb, D, L]
    vb = F.pad(v, (0, 0, left, right)).unfold(2, L, block).transpose(-1, -2)  # [B, H, nb, L, D]
    qb = F.pad(q, (0, 0, 0, Tq - T)).view(B, H, nb, block, D)
    band = (qb @ kb).float() * scale  # [B, H, nb, block, L]
    a = torch.arange(block, device=dev)
    c = torch.arange(L, device=dev)
    rel = c[None, :] - window - a[:, None]  # key - query, same for every block
    near = (rel <= 0) & (rel >= -window) if causal else rel.abs() <= window  # [block, L]
    ok_b = F.pad(key_ok, (left, right)).unfold(1, L, block)  # [B, nb, L]
    qpos = torch.arange(Tq, device=dev).view(nb, block, 1)
    kpos = (torch.arange(nb, device=dev) * block - window).view(nb, 1, 1) + c.view(1, 1, L)
    self_key = qpos == kpos  # [nb, block, L]
    allowed = near[None, None] & ok_b[:, :, None, :] | self_key[None]  # [B, nb, block, L]
    band = band.masked_fill(~allowed[:, None], float("-inf")).view(B, H, Tq, L)

    parts, s_idx = [band], None
    if sinks is not None and bool(sinks.any()):
        sinks = sinks.bool() & key_ok
        n_s = int(sinks.sum(1).max())
        s_idx = torch.sort((~sinks).to(torch.int8), dim=1, stable=True).indices[:, :n_s]  # [B, S]
        s_ok = sinks.gather(1, s_idx)  # rows with fewer sinks carry filler entries
        ks = k.gather(2, s_idx[:, None, :, None].expand(B, H, n_s, D))
        sc = (F.pad(q, (0, 0, 0, Tq - T)) @ ks.transpose(-1, -2)).float() * scale  # [B, H, Tq, S]
        d = torch.arange(Tq, device=dev)[None, :, None] - s_idx[:, None, :]  # query - sink
        in_band = (d >= 0) & (d <= window) if causal else d.abs() <= window
        s_allowed = s_ok[:, None, :] & ~in_band & ((d >= 0) if causal else True)
        parts.append(sc.masked_fill(~s_allowed[:, None], float("-inf")))
    p = torch.softmax(torch.cat(parts, -1), dim=-1).to(q.dtype)
    out = (p[..., :L].reshape(B, H, nb, block, L) @ vb).view(B, H, Tq, D)
    if s_idx is not None:
        vs = v.gather(2, s_idx[:, None, :, None].expand(B, H, s_idx.shape[1], D))
        out = out + p[..., L:] @ vs
    return out[:, :, :T]


def masked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """Reference: dense softmax over all keys with a bool mask [B|1, 1, T, T] (computes every pair)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
