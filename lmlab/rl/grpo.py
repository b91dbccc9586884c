"""The GRPO objective: group-relative advantages, clipped importance ratios, k3 KL, loss variants.

Shapes: N completions = n_prompts * G, grouped consecutively (rows g*G .. g*G+G-1 share a prompt);
per-token tensors are [N, L] over completion tokens with a 0/1 `mask` for real (non-pad) tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmlab.cache import KVCache

LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo")
SCALES = ("group", "batch", "none")
STD_EPS = 1e-4


@dataclass
class Advantages:
    """Per-completion advantages [N] and how many groups had identical rewards (no signal)."""

    values: torch.Tensor
    group_mean: torch.Tensor  # [N / G]
    group_std: torch.Tensor  # [N / G]
    frac_zero_std: float


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group") -> Advantages:
    """A_i = r_i - mean(group), divided by the group std ("group"), the batch std ("batch") or 1.

    A group whose rewards are all equal gets advantage exactly 0 (no 0/0).
    """
    if group_size < 2:
        raise ValueError(
            f"group_size={group_size}: GRPO compares completions of the same prompt, so it needs "
            "at least 2 per prompt; set num_generations >= 2"
        )
    if scale not in SCALES:
        raise ValueError(f"scale_rewards={scale!r} is not one of {SCALES}")
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(
            f"rewards of shape {tuple(rewards.shape)} cannot be split into groups of {group_size}"
        )
    r = rewards.float().view(-1, group_size)
    mean, std = r.mean(1), r.std(1)  # unbiased std, like torch.std
    centered = r - mean[:, None]
    if scale == "group":
        adv = centered / (std[:, None] + STD_EPS)
    elif scale == "batch":
        adv = centered / (rewards.float().std() + STD_EPS) if rewards.numel() > 1 else centered
    else:
        adv = centered
    zero = std == 0
    adv = torch.where(zero[:, None], torch.zeros_like(adv), adv)
    return Advantages(adv.reshape(-1), mean, std, float(zero.float().mean()))


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi || ref) per token: exp(ref - logp) - (ref - logp) - 1 >= 0."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
) -> torch.Tensor:
    """Per-token clipped surrogate -min(r A, clip(r, 1-eps, 1+eps_high) A), r = exp(logp - old)."""
    eps_high = epsilon if epsilon_high is None else epsilon_high
    ratio = torch.exp(logp - old_logp)
    adv = advantages[:, None]
    return -torch.minimum(ratio * adv, ratio.clamp(1 - epsilon, 1 + eps_high) * adv)


def clip_fraction(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
) -> float:
    """Fraction of real tokens whose gradient the clip removes (ratio outside the band, same side as A)."""
    eps_high = epsilon if epsilon_high is None else epsilon_high
    ratio = torch.exp(logp - old_logp).detach()
    adv = advantages[:, None]
    clipped = ((ratio < 1 - epsilon) & (adv < 0)) | ((ratio > 1 + eps_high) & (adv > 0))
    m = mask.bool()
    return float(clipped[m].float().mean()) if m.any() else 0.0


def aggregate(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    loss_type: str = "grpo",
    max_completion_length: int | None = None,
    total_sequences: int | None = None,
    total_tokens: int | None = None,
) -> torch.Tensor:
    """Reduce [N, L] per-token losses to a scalar the way each variant defines it.

    grpo: mean over each sequence's tokens, then mean over sequences (GRPO paper).
    bnpo / dapo: sum over all tokens / number of tokens (DAPO's token-level mean).
    dr_grpo: sum over all tokens / (sequences * max_completion_length) (Dr. GRPO, no length bias).
    With gradient accumulation pass the whole batch's `total_sequences` / `total_tokens` so the
    summed micro-batch losses equal the loss of the full batch.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type={loss_type!r} is not one of {LOSS_TYPES}")
    mask = mask.to(per_token.dtype)
    n_seq = per_token.shape[0] if total_sequences is None else total_sequences
    if loss_type == "grpo":
        per_seq = (per_token * mask).sum(1) / mask.sum(1).clamp(min=1)
        return per_seq.sum() / n_seq
    if loss_type == "dr_grpo":
        L = per_token.shape[1] if max_completion_length is None else max_completion_length
        return (per_token * mask).sum() / (n_seq * L)
    n_tok = mask.sum().clamp(min=1) if total_tokens is None else max(total_tokens, 1)
    return (per_token * mask).sum() / n_tok


def unembed(model: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Logits of final hidden states [..., d] -> [..., vocab]: the LM head on the positions asked for only.

    The prompt's logits are never needed; skipping them saves a [B, P, vocab] matmul and its memory.
    """
    if getattr(model, "unembed", None) is None:
        raise ValueError(f"{model.cfg.name} has no LM head (an encoder?); GRPO needs a causal LM")
    return model.to_logits(hidden)


def token_logprobs(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    attention_mask: torch.Tensor,
    n_completion: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
    prefix: torch.Tensor | None = None,
    share_prompts: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(token) of the last `n_completion` positions of `tokens` [N, T] -> [N, L].

    `prefix` [S]: tokens every row starts with (a shared system prompt). They run once, as a
    batch of one whose keys/values every row then attends to, so the rows carry only the rest.
    `share_prompts`: consecutive rows with the same prompt part (the G completions of a group) run
    that prompt once too, and only their completions separately. Gradients flow through the
    shared keys/values, so log-probs and gradients equal the unshared forward's.
    Logits are divided by the sampling temperature, so the ratio uses the distribution sampled from.
    """
    hidden = completion_hidden(model, tokens, attention_mask, n_completion, prefix, share_prompts)
    logits = unembed(model, hidden).float()
    logp_all = F.log_softmax(logits if temperature == 1 else logits / temperature, -1)
    logp = logp_all.gather(-1, tokens[:, -n_completion:, None]).squeeze(-1)
    entropy = None
    if with_entropy:  # row by row: [L, vocab] temporaries stay in the allocator's cache
        with torch.no_grad():
            entropy = torch.stack([-(row.exp() * row).sum(-1) for row in logp_all.detach()])
    return logp, entropy


def completion_hidden(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    attention_mask: torch.Tensor,
    L: int,
    prefix: torch.Tensor | None = None,
    share_prompts: bool = True,
) -> torch.Tensor:
    """Final hidden states [N, L, d] at the positions that predict the last L tokens of each row.

    Up to three stages on one KV cache: the shared `prefix` (batch 1), each distinct prompt
    (batch = number of groups), then every row's completion; the cache is repeated between stages.
    """
    # the last token's own logits are never needed, so it is not fed (fits a context of P + L - 1)
    inp, mask = tokens[:, :-1], attention_mask[:, :-1]
    N, R = inp.shape[0], tokens.shape[1] - L  # R: prompt columns after the prefix
    first = inverse = None
    if share_prompts and R > 0:
        _, inverse, counts = torch.unique_consecutive(
            torch.cat([inp[:, :R], mask[:, :R]], 1), dim=0, return_inverse=True, return_counts=True
        )
        first = counts.cumsum(0) - counts if counts.numel() < N else None
    S = 0 if prefix is None else prefix.numel()
    if not S and first is None:
        return model(inp, attention_mask=mask, return_hidden=True)[:, -L:]
    cache = KVCache(model, 1 if S else len(first), S + inp.shape[1])
    if S:
        model(prefix[None].to(inp.device), cache=cache, return_hidden=True)
        cache.reorder(inp.new_zeros(N if first is None else len(first)))
    if first is None:
        return model(inp, attention_mask=mask, cache=cache, return_hidden=True)[:, -L:]
    last = model(inp[first, :R], attention_mask=mask[first, :R], cache=cache, return_hidden=True)
    last = last[:, -1:].index_select(0, inverse)
    if L == 1:
        return last
    cache.reorder(inverse)
    rest = model(inp[:, R:], attention_mask=mask[:, R:], cache=cache, return_hidden=True)
    return torch.cat([last, rest], 1)
