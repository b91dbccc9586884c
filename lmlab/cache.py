"""A static, preallocated key/value cache: prefill once, then decode one token at a time.

Rows may be left-padded: the cache keeps which slots hold real tokens (`key_mask`) and each row's
next position, so a padded row gets the positions and attention it would have alone.

Two ways to read it back. By default each layer attends to the slots filled so far (the fastest
eager path: attention work grows with the text). With `static=True` every shape is fixed: new
keys/values are written at a tensor cursor and attention always spans all `max_len` slots, with
unfilled ones masked out, so a decode step can be compiled once (`torch.compile`) and replayed.
"""

from __future__ import annotations

import torch

from lmlab.errors import InputError


class LayerCache:
    """One layer's view of a `KVCache`: `update` writes the new keys/values and returns all so far."""

    def __init__(self, cache: KVCache, layer: int) -> None:
        self.cache, self.layer = cache, layer

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v: [B, KV, T, D] (keys after RoPE) -> cached keys/values [B, KV, S, D]

        (S = length + T, or max_len for a static cache)."""
        c, i = self.cache, self.layer
        if c.static:
            c.k[i].index_copy_(2, c.slots, k.to(c.k[i].dtype))  # (autocast may hand bf16)
            c.v[i].index_copy_(2, c.slots, v.to(c.v[i].dtype))
            return c.k[i], c.v[i]
        start, end = c.length, c.length + k.shape[2]
        c.k[i][:, :, start:end] = k
        c.v[i][:, :, start:end] = v
        return c.k[i][:, :, :end], c.v[i][:, :, :end]


class KVCache:
    """Per-layer keys/values [B, n_kv_heads, max_len, head_dim], allocated once."""

    def __init__(
        self,
        model: torch.nn.Module,
        batch_size: int,
        max_len: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        static: bool = False,
    ) -> None:
        cfg = model.cfg
        if max_len <= 0 or batch_size <= 0:
            raise InputError(
                f"KVCache needs batch_size > 0 and max_len > 0, got {batch_size}, {max_len}"
            )
        if static and cfg.positions == "learned" and max_len > cfg.max_seq_len:
            raise InputError(
                f"a static cache of max_len={max_len} exceeds this model's max_seq_len="
                f"{cfg.max_seq_len} (learned positions); build it with max_len <= {cfg.max_seq_len}"
            )
        ref = next(model.parameters())
        device = torch.device(device or ref.device)
        if dtype is None:  # under autocast attention runs in the low precision: store it so
            on = torch.is_autocast_enabled(device.type)
            dtype = torch.get_autocast_dtype(device.type) if on else ref.dtype
        shape = (batch_size, cfg.n_kv_heads, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)]
        self.key_mask = torch.zeros(batch_size, max_len, dtype=torch.bool, device=device)
        self.next_pos = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.batch_size, self.max_len, self.static = batch_size, max_len, static
        self._length = 0
        # static caches count filled slots in a tensor (no Python int a compiled step would guard on)
        self.cursor = torch.zeros((), dtype=torch.long, device=device)
        self.slots = self.cursor[None]  # slots being written by the current forward

    @property
    def length(self) -> int:
        """Tokens cached so far."""
        return int(self.cursor) if self.static else self._length

    def layer(self, i: int) -> LayerCache:
        return LayerCache(self, i)

    def begin(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Register `tokens` [B, T] about to be appended; returns their position ids [B, T]."""
        B, T = tokens.shape
        if B != self.batch_size:
            raise InputError(
                f"cache was built for batch {self.batch_size}, got tokens of batch {B}"
            )
        if not self.static and self._length + T > self.max_len:
            raise InputError(
                f"cache is full: {self._length} cached + {T} new tokens > max_len={self.max_len}; "
                "build the KVCache with a larger max_len (prompt length + max_new_tokens)"
            )
        real = (
            torch.ones(B, T, dtype=torch.bool, device=tokens.device)
            if attention_mask is None
            else attention_mask.bool()
        )
        if self.static:
            self.slots = self.cursor + torch.arange(T, device=self.cursor.device)
            self.key_mask.index_copy_(1, self.slots, real)
        else:
            self.key_mask[:, self._length : self._length + T] = real
        pos = self.next_pos[:, None] + real.long().cumsum(-1) - 1
        self.next_pos += real.long().sum(-1)
        return pos.clamp(min=0)

    def mask(self, T: int, window: int | None, causal: bool = True) -> torch.Tensor:
        """bool [B, 1, T, S]: real keys, causal, within `window`; a query always sees itself."""
        device = self.key_mask.device
        if self.static:
            q, S = self.slots[:, None], self.max_len
        else:
            S = self._length + T
            q = torch.arange(self._length, S, device=device)[:, None]
        k = torch.arange(S, device=device)[None, :]
        allowed = k <= q if causal else torch.ones_like(k <= q)
        if window is not None:
            allowed = allowed & (q - k < window)
        allowed = allowed[None] & self.key_mask[:, None, :S]
        return (allowed | (k == q)[None])[:, None]

    def commit(self, T: int) -> None:
        """The forward pass over T new tokens finished: they are now part of the cache."""
        if self.static:
            self.cursor += T
        else:
            self._length += T

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows `index` (beam search): every layer's keys/values, masks and positions."""
        for i in range(len(self.k)):
            self.k[i] = self.k[i].index_select(0, index)
            self.v[i] = self.v[i].index_select(0, index)
        self.key_mask = self.key_mask.index_select(0, index)
        self.next_pos = self.next_pos.index_select(0, index)
        self.batch_size = index.numel()
