"""A static, preallocated key/value cache: prefill once, then decode one token at a time.

Rows may be left-padded: the cache keeps which slots hold real tokens (`key_mask`) and each row's
next position, so a padded row gets the positions and attention it would have alone.
"""

from __future__ import annotations

import torch


class LayerCache:
    """One layer's view of a `KVCache`: `update` writes the new keys/values and returns all so far."""

    def __init__(self, cache: KVCache, layer: int) -> None:
        self.cache, self.layer = cache, layer

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v: [B, KV, T, D] (keys after RoPE) -> cached keys/values [B, KV, length + T, D]."""
        c = self.cache
        start, end = c.length, c.length + k.shape[2]
        c.k[self.layer][:, :, start:end] = k
        c.v[self.layer][:, :, start:end] = v
        return c.k[self.layer][:, :, :end], c.v[self.layer][:, :, :end]


class KVCache:
    """Per-layer keys/values [B, n_kv_heads, max_len, head_dim], allocated once."""

    def __init__(
        self,
        model: torch.nn.Module,
        batch_size: int,
        max_len: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        cfg = model.cfg
        if max_len <= 0 or batch_size <= 0:
            raise ValueError(
                f"KVCache needs batch_size > 0 and max_len > 0, got {batch_size}, {max_len}"
            )
        ref = next(model.parameters())
        dtype, device = dtype or ref.dtype, device or ref.device
        shape = (batch_size, cfg.n_kv_heads, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)]
        self.key_mask = torch.zeros(batch_size, max_len, dtype=torch.bool, device=device)
        self.next_pos = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.batch_size, self.max_len, self.length = batch_size, max_len, 0

    def layer(self, i: int) -> LayerCache:
        return LayerCache(self, i)

    def begin(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Register `tokens` [B, T] about to be appended; returns their position ids [B, T]."""
        B, T = tokens.shape
        if B != self.batch_size:
            raise ValueError(
                f"cache was built for batch {self.batch_size}, got tokens of batch {B}"
            )
        if self.length + T > self.max_len:
            raise ValueError(
                f"cache is full: {self.length} cached + {T} new tokens > max_len={self.max_len}; "
                "build the KVCache with a larger max_len (prompt length + max_new_tokens)"
            )
        real = (
            torch.ones(B, T, dtype=torch.bool, device=tokens.device)
            if attention_mask is None
            else attention_mask.bool()
        )
        self.key_mask[:, self.length : self.length + T] = real
        pos = self.next_pos[:, None] + real.long().cumsum(-1) - 1
        self.next_pos += real.long().sum(-1)
        return pos.clamp(min=0)

    def mask(self, T: int, window: int | None, causal: bool = True) -> torch.Tensor:
        """bool [B, 1, T, length + T]: real keys, causal, within `window`; a query always sees itself."""
        S = self.length + T
        q = torch.arange(self.length, S, device=self.key_mask.device)[:, None]
        k = torch.arange(S, device=self.key_mask.device)[None, :]
        allowed = k <= q if causal else torch.ones_like(k <= q)
        if window is not None:
            allowed = allowed & (q - k < window)
        allowed = allowed[None] & self.key_mask[:, None, :S]
        return (allowed | (k == q)[None])[:, None]

    def commit(self, T: int) -> None:
        """The forward pass over T new tokens finished: they are now part of the cache."""
        self.length += T

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows `index` (beam search): every layer's keys/values, masks and positions."""
        for i in range(len(self.k)):
            self.k[i] = self.k[i].index_select(0, index)
            self.v[i] = self.v[i].index_select(0, index)
        self.key_mask = self.key_mask.index_select(0, index)
        self.next_pos = self.next_pos.index_select(0, index)
        self.batch_size = index.numel()
