"""Direct logit attribution: how much each layer, head or neuron writes toward a token's logit.

Each component's output at a position is passed through the final norm *linearly* (the scale of
the whole residual stream at that position, from the cache) and dotted with the unembedding
direction of the answer (minus a wrong answer). The pieces sum to the logit (difference) minus
the final norm bias's share.
"""

from __future__ import annotations

import torch

from lmlab.interp.activation_cache import ActivationCache
from lmlab.model import MLP, Transformer

Tokens = int | torch.Tensor


def dla_names(model: Transformer) -> list[str]:
    """Hook names a cache needs for every function here."""
    n = model.cfg.n_layers
    names = ["hook_embed", "hook_pos_embed", "hook_token_type_embed"]
    for i in range(n):
        names += [
            f"blocks.{i}.{h}"
            for h in ("hook_attn_out", "hook_mlp_out", "attn.hook_z", "mlp.hook_post")
        ]
    names.append(f"blocks.{n - 1}.hook_resid_post")
    return [x for x in names if x in model.hook_dict]


def dla_by_layer(
    cache: ActivationCache, answer: Tokens, wrong: Tokens | None = None, *, pos: int = -1
) -> tuple[torch.Tensor, list[str]]:
    """Attribution of embeddings and each block's attention / MLP output: ([C, B], labels)."""
    stack, labels = cache.decompose_resid(pos_slice=pos, return_labels=True)
    return cache.logit_attrs(stack, answer, wrong, pos_slice=pos), labels


def dla_by_head(
    cache: ActivationCache, answer: Tokens, wrong: Tokens | None = None, *, pos: int = -1
) -> torch.Tensor:
    """Attribution of every attention head: [n_layers, n_heads, B]."""
    stack = cache.stack_head_results(pos_slice=pos)
    attrs = cache.logit_attrs(stack, answer, wrong, pos_slice=pos)  # [L*H, B]
    model = cache.model
    return attrs.view(model.cfg.n_layers, model.cfg.n_heads, -1)


def dla_by_neuron(
    cache: ActivationCache,
    layer: int,
    answer: Tokens,
    wrong: Tokens | None = None,
    *,
    pos: int = -1,
) -> torch.Tensor:
    """Attribution of each MLP neuron of `layer`: [B, d_ff] (activation x its W_down column)."""
    model: Transformer = cache.model
    mlp = model.blocks[layer].mlp
    if not isinstance(mlp, MLP) or model.cfg.sandwich_norm:
        raise ValueError(
            f"dla_by_neuron needs a dense MLP feeding the residual directly; {model.cfg.name} has "
            f"{'experts' if not isinstance(mlp, MLP) else 'a norm after the MLP'}"
        )
    post = cache["post", layer][:, pos]  # [B, d_ff]
    w_down = mlp.down.weight  # [d, d_ff]
    # The norm is linear given its cached scale, so push the unembedding direction back through it once.
    B = post.shape[0]
    probe = torch.eye(model.cfg.d_model, device=post.device, dtype=post.dtype)  # [d, d]
    per_dim = cache.logit_attrs(
        probe[:, None].expand(-1, B, -1), answer, wrong, pos_slice=pos
    )  # [d, B]
    neuron_dirs = w_down.T.to(post.dtype) @ per_dim  # [d_ff, B]
    return post * neuron_dirs.T * model.cfg.residual_scale
