"""Prompt tuning (Lester et al. 2021): trainable vectors in place of the first input embeddings.

Without a cache the model sees n virtual tokens before the real ones (the logits gain n leading
positions). With a KV cache (generation) the virtual tokens, which under causal attention see
only each other, are run once and their keys/values become per-layer prefixes.
"""

from __future__ import annotations

import torch
from torch import nn

from lmlab.peft._inject import call_parts, check_free, set_prefixes, shifted_positions
from lmlab.peft.prefix_tuning import prompt_kv

INITS = ("random", "vocab", "text")


class PromptTuning(nn.Module):
    """n virtual token embeddings [n, d_model], as seen at `hook_embed` (after any embedding scale)."""

    def __init__(
        self,
        model: nn.Module,
        n_virtual: int,
        init: str = "vocab",
        text: str | None = None,
        tokenizer=None,
        seed: int = 0,
    ):
        super().__init__()
        if not isinstance(n_virtual, int) or n_virtual < 1:
            raise ValueError(f"n_virtual={n_virtual!r} must be a positive integer (e.g. 20)")
        if init not in INITS:
            raise ValueError(f"init={init!r}; choose one of {INITS}")
        W = model.embed.weight.detach()
        g = torch.Generator().manual_seed(seed)
        if init == "text":
            if not text or tokenizer is None:
                raise ValueError("init='text' needs text=... and tokenizer=...")
            ids = tokenizer.encode(text)
            ids = (ids * (n_virtual // max(1, len(ids)) + 1))[:n_virtual]
            vec = W[torch.tensor(ids)].clone()
        elif init == "vocab":
            vec = W[torch.randint(0, W.shape[0], (n_virtual,), generator=g)].clone()
        else:
            vec = torch.randn(n_virtual, W.shape[1], generator=g) * W.float().std()
        if model.cfg.embed_scale:
            vec = vec * model.cfg.d_model**0.5
        self.n_virtual = n_virtual
        self.embedding = nn.Parameter(vec.float().to(W.dtype))
        self.replace = False  # True while a forward pass must put the vectors in the first n slots

    def to_prefix(self, model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Keys/values the virtual tokens leave at every layer (causal models)."""
        self.replace = True
        try:
            model._prompt_busy = True
            return prompt_kv(model, [0] * self.n_virtual)  # placeholder ids, replaced at hook_embed
        finally:
            model._prompt_busy, self.replace = False, False


def _replace_embeddings(pt: PromptTuning, x: torch.Tensor) -> torch.Tensor:
    """At `hook_embed`: the first n positions get the virtual tokens while `pt.replace` is set."""
    if not pt.replace:
        return x
    v = pt.embedding.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
    return torch.cat([v, x[:, pt.n_virtual :]], 1)


def _pre_hook(model: nn.Module, args: tuple, kwargs: dict):
    pt: PromptTuning = model.prompt_tuning
    if getattr(model, "_prompt_busy", False):
        return None
    tokens, kwargs = call_parts(args, kwargs)
    cache = kwargs.get("cache")
    if cache is not None:
        if cache.length == 0:
            if not model.cfg.causal:
                raise ValueError("prompt tuning with a KV cache needs a causal model")
            set_prefixes(
                model, None
            )  # the virtual tokens must not see the previous call's prefixes
            set_prefixes(model, pt.to_prefix(model))
            if kwargs.get("position_ids") is None:
                cache.next_pos += pt.n_virtual
        pt.replace = False
        return (tokens,), kwargs
    set_prefixes(model, None)
    n, B = pt.n_virtual, tokens.shape[0]
    positions = shifted_positions(tokens, kwargs, n)
    head = torch.arange(n, device=tokens.device).expand(B, n)
    kwargs["position_ids"] = torch.cat([head, positions.expand(B, -1)], 1)
    if kwargs.get("attention_mask") is not None:
        m = kwargs["attention_mask"]
        kwargs["attention_mask"] = torch.cat([m.new_ones(B, n), m], 1)
    if kwargs.get("targets") is not None:  # no loss at the virtual positions
        kwargs["targets"] = torch.cat(
            [kwargs["targets"].new_full((B, n), -100), kwargs["targets"]], 1
        )
    if kwargs.get("token_type_ids") is not None:
        kwargs["token_type_ids"] = torch.cat(
            [kwargs["token_type_ids"].new_zeros(B, n), kwargs["token_type_ids"]], 1
        )
    pt.replace = True
    return (torch.cat([tokens.new_zeros(B, n), tokens], 1),), kwargs


def apply_prompt_tuning(
    model: nn.Module,
    n_virtual: int,
    init: str = "vocab",
    text: str | None = None,
    tokenizer=None,
    freeze_base: bool = True,
    seed: int = 0,
) -> PromptTuning:
    """Attach n trainable virtual tokens (as `model.prompt_tuning`); the base is frozen."""
    check_free(model, "prompt_tuning")
    pt = PromptTuning(model, n_virtual, init, text, tokenizer, seed).to(model.embed.weight.device)
    if freeze_base:
        for p in model.parameters():
            p.requires_grad_(False)
    model.prompt_tuning = pt
    model._prompt_handles = [
        model.register_forward_pre_hook(_pre_hook, with_kwargs=True),
        model.hook_embed.register_forward_hook(lambda m, a, out: _replace_embeddings(pt, out)),
    ]
    return pt


def remove_prompt_tuning(model: nn.Module) -> None:
    """Take the virtual tokens off."""
    for h in model._prompt_handles:
        h.remove()
    del model._prompt_handles, model.prompt_tuning
    set_prefixes(model, None)
