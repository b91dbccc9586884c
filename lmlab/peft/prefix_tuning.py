"""Prefix tuning (Li & Liang 2021): trainable keys/values that every layer's queries attend to.

The prefixes go through `Attention.prefix` (no RoPE; used as they are), so they work with the
KV cache, batching, left padding and every family. Real tokens are placed at positions P..,
as after a real prompt of P tokens (the layout of HF PEFT). With `reparam_hidden`, the
prefixes are an MLP of a smaller embedding during training, as in the paper; `freeze()`
computes them once for inference.
"""

from __future__ import annotations

import torch
from torch import nn

from lmlab.peft._inject import call_parts, check_free, set_prefixes, shifted_positions


class PrefixTuning(nn.Module):
    """Keys/values [n_layers, 2, n_kv_heads, P, head_dim], direct or from a reparameterization MLP."""

    def __init__(
        self,
        model: nn.Module,
        n_prefix: int,
        reparam_hidden: int | None = None,
        init_std: float = 0.02,
    ):
        super().__init__()
        if not isinstance(n_prefix, int) or n_prefix < 1:
            raise ValueError(f"n_prefix={n_prefix!r} must be a positive integer (e.g. 10)")
        cfg = model.cfg
        self.n_prefix = n_prefix
        self.shape = (cfg.n_layers, 2, cfg.n_kv_heads, n_prefix, cfg.head_dim)
        if reparam_hidden:
            out = cfg.n_layers * 2 * cfg.n_kv_heads * cfg.head_dim
            self.embedding = nn.Parameter(torch.randn(n_prefix, cfg.d_model) * init_std)
            self.mlp = nn.Sequential(
                nn.Linear(cfg.d_model, reparam_hidden), nn.Tanh(), nn.Linear(reparam_hidden, out)
            )
            self.prefix = None
        else:
            self.prefix = nn.Parameter(torch.randn(self.shape) * init_std)
            self.mlp = None

    def kv(self) -> torch.Tensor:
        """[n_layers, 2, n_kv_heads, P, head_dim]."""
        if self.mlp is None:
            return self.prefix
        L, _, KV, P, D = self.shape
        return self.mlp(self.embedding).view(P, L, 2, KV, D).permute(1, 2, 3, 0, 4)

    @torch.no_grad()
    def freeze(self) -> None:
        """Drop the reparameterization: keep the prefixes it produces as plain parameters."""
        if self.mlp is not None:
            self.prefix = nn.Parameter(self.kv().detach().clone())
            del self.mlp, self.embedding
            self.mlp = None

    @torch.no_grad()
    def load_kv(self, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Set the prefixes to given per-layer keys/values [n_kv_heads, P, head_dim] (e.g. of a real prompt)."""
        self.freeze()
        self.prefix.copy_(torch.stack([torch.stack([k, v]) for k, v in kv]))


def _pre_hook(model: nn.Module, args: tuple, kwargs: dict):
    pt: PrefixTuning = model.prefix_tuning
    tokens, kwargs = call_parts(args, kwargs)
    kv = pt.kv()
    set_prefixes(model, [(kv[i, 0], kv[i, 1]) for i in range(kv.shape[0])])
    cache = kwargs.get("cache")
    if cache is None:
        kwargs["position_ids"] = shifted_positions(tokens, kwargs, pt.n_prefix)
    elif cache.length == 0 and kwargs.get("position_ids") is None:
        cache.next_pos += pt.n_prefix  # prefill: decoding continues after the prefix positions
    return (tokens,), kwargs


def apply_prefix_tuning(
    model: nn.Module, n_prefix: int, reparam_hidden: int | None = None, freeze_base: bool = True
) -> PrefixTuning:
    """Attach trainable prefixes to every layer (as `model.prefix_tuning`); the base is frozen."""
    check_free(model, "prefix_tuning")
    ref = next(model.parameters())
    pt = PrefixTuning(model, n_prefix, reparam_hidden).to(ref.device, ref.dtype)
    if freeze_base:
        for p in model.parameters():
            p.requires_grad_(False)
    model.prefix_tuning = pt
    model._prefix_handle = model.register_forward_pre_hook(_pre_hook, with_kwargs=True)
    return pt


def remove_prefix_tuning(model: nn.Module) -> None:
    """Take the prefixes off: the model computes what it did before."""
    model._prefix_handle.remove()
    del model._prefix_handle, model.prefix_tuning
    set_prefixes(model, None)


@torch.no_grad()
def prompt_kv(model: nn.Module, ids: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-layer keys/values [n_kv_heads, P, head_dim] a real prompt leaves in the KV cache."""
    from lmlab.cache import KVCache

    cache = KVCache(model, 1, len(ids))
    model(torch.tensor([ids], device=next(model.parameters()).device), cache=cache)
    return [(cache.k[i][0].clone(), cache.v[i][0].clone()) for i in range(model.cfg.n_layers)]
