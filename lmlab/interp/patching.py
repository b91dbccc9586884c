"""Activation patching and attribution patching (its first-order gradient approximation).

Patching runs the *corrupted* prompt and overwrites one activation (a layer at a position, a
head, ...) with its value from the *clean* run, then reads a metric on the output (Meng et al.
2022; Wang et al. 2022). Many patches run as one batched forward: row r of the batch carries
patch r. Attribution patching (Nanda 2023) estimates every patch at once from one forward and
one backward: effect ~ (clean - corrupt) . d metric / d activation at the corrupted run.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm import tqdm

from lmlab.errors import LmlabError
from lmlab.hooks import HookPoint
from lmlab.interp.activation_cache import ActivationCache, hook_name, run_with_cache
from lmlab.model import Transformer

# metric(logits [N, T, V]) -> [N]: one value per sequence (or a scalar for a single sequence)
Metric = Callable[[torch.Tensor], torch.Tensor]

POSITION_KINDS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
HEAD_KINDS = ("z", "q", "k", "v", "pattern")


class PatchingError(LmlabError, ValueError):
    """Clean and corrupted inputs or activations that cannot be patched into each other."""


def logit_diff(answer: int | torch.Tensor, wrong: int | torch.Tensor, pos: int = -1) -> Metric:
    """Metric: logit[answer] - logit[wrong] at `pos`, per sequence (ids: int or [B])."""

    def metric(logits: torch.Tensor) -> torch.Tensor:
        last = logits[:, pos].float()  # [N, V]
        n = last.shape[0]
        a = torch.as_tensor(answer, device=last.device).reshape(-1)
        w = torch.as_tensor(wrong, device=last.device).reshape(-1)
        reps = n // max(a.numel(), 1)
        a, w = a.repeat(reps), w.repeat(reps)
        rows = torch.arange(n, device=last.device)
        return last[rows, a] - last[rows, w]

    return metric


def normalized(metric: Metric, clean: float, corrupt: float) -> Metric:
    """Metric rescaled so the corrupted run scores 0 and the clean run 1 (fraction recovered)."""
    span = clean - corrupt
    if abs(span) < 1e-9:
        raise PatchingError(
            f"clean and corrupted runs score the same ({clean:.4g}); choose a corruption that "
            "changes the metric"
        )
    return lambda logits: (metric(logits) - corrupt) / span


def _check_pair(clean: torch.Tensor, corrupt: torch.Tensor) -> None:
    if clean.shape != corrupt.shape:
        raise PatchingError(
            f"clean tokens have shape {tuple(clean.shape)} but corrupted tokens {tuple(corrupt.shape)}; patching "
            "copies activations position by position, so both prompts need the same number of tokens "
            "(pick a corruption with the same token count, or pad both)"
        )


def _per_seq(values: torch.Tensor, n_patches: int, batch: int) -> torch.Tensor:
    """Metric output [n_patches * batch] -> [n_patches], averaged over the clean batch."""
    values = values.float().reshape(-1)
    if values.numel() != n_patches * batch:
        raise PatchingError(
            f"the metric returned {values.numel()} values for {n_patches * batch} sequences; it must "
            "return one value per sequence (shape [N]), e.g. patching.logit_diff(...)"
        )
    return values.view(n_patches, batch).mean(1)


def patch_activation(
    model: Transformer,
    corrupt_tokens: torch.Tensor,
    name: str,
    value: torch.Tensor,
    metric: Metric,
    index: tuple = (),
) -> float:
    """Metric of the corrupted run with activation `name` (at `index`, e.g. `(slice(None), 3)`) set to `value`."""
    hp = model.hook_dict.get(name) if name in model.hook_dict else None
    if hp is None:
        model.match_hooks(name, what="hook name")  # raises with near names

    def hook(act: torch.Tensor, h: HookPoint) -> torch.Tensor:
        target = act[index]
        if target.shape != value.shape:
            raise PatchingError(
                f"cannot patch {name}{list(index) if index else ''}: the corrupted run has shape "
                f"{tuple(target.shape)} there, the patch has shape {tuple(value.shape)}; take the "
                "patch from a run on inputs of the same shape"
            )
        act = act.clone()
        act[index] = value.to(act.dtype)
        return act

    with torch.no_grad():
        logits = model.run_with_hooks(corrupt_tokens, fwd_hooks=[(name, hook)])
    return float(metric(logits).float().mean())


def _batched(
    model: Transformer,
    corrupt_tokens: torch.Tensor,
    name: str,
    n_patches: int,
    apply: Callable[[torch.Tensor, int], None],
    metric: Metric,
    chunk: int,
) -> torch.Tensor:
    """Run `n_patches` patched copies of the corrupted batch, `chunk` at a time; apply(act_view, r) patches row r."""
    B = corrupt_tokens.shape[0]
    out = []
    for start in range(0, n_patches, chunk):
        rows = list(range(start, min(start + chunk, n_patches)))
        tokens = corrupt_tokens.repeat(len(rows), *([1] * (corrupt_tokens.dim() - 1)))

        def hook(act: torch.Tensor, h: HookPoint, rows: list[int] = rows) -> torch.Tensor:
            act = act.clone()
            view = act.view(len(rows), B, *act.shape[1:])
            for j, r in enumerate(rows):
                apply(view[j], r)
            return act

        with torch.no_grad():
            logits = model.run_with_hooks(tokens, fwd_hooks=[(name, hook)])
        out.append(_per_seq(metric(logits), len(rows), B))
    return torch.cat(out)


def _clean_cache(
    model: Transformer, clean_tokens: torch.Tensor, corrupt_tokens: torch.Tensor, names: list[str]
) -> ActivationCache:
    _check_pair(clean_tokens, corrupt_tokens)
    _, cache = run_with_cache(model, clean_tokens, names_filter=names)
    return cache


def patch_by_position(
    model: Transformer,
    clean_tokens: torch.Tensor,
    corrupt_tokens: torch.Tensor,
    metric: Metric,
    kind: str = "resid_pre",
    *,
    layers: list[int] | None = None,
    chunk: int = 32,
) -> torch.Tensor:
    """Patch `kind` ("resid_pre", "attn_out", "mlp_out", ...) at every (layer, position): [layers, T]."""
    if kind not in POSITION_KINDS:
        raise PatchingError(
            f"kind={kind!r} is not patchable by position; choose one of {POSITION_KINDS}"
        )
    layers = list(range(model.cfg.n_layers)) if layers is None else layers
    names = [hook_name(model, kind, i) for i in layers]
    cache = _clean_cache(model, clean_tokens, corrupt_tokens, names)
    T = clean_tokens.shape[-1]
    rows = []
    for name in tqdm(names, desc=f"patch {kind}", leave=False):
        clean = cache[name]  # [B, T, d]

        def apply(view: torch.Tensor, p: int, clean: torch.Tensor = clean) -> None:
            view[:, p] = clean[:, p]

        rows.append(_batched(model, corrupt_tokens, name, T, apply, metric, chunk))
    return torch.stack(rows)


def patch_heads(
    model: Transformer,
    clean_tokens: torch.Tensor,
    corrupt_tokens: torch.Tensor,
    metric: Metric,
    kind: str = "z",
    *,
    by_position: bool = False,
    chunk: int = 32,
) -> torch.Tensor:
    """Patch each head's `kind` ("z", "q", "k", "v" or "pattern"): [layers, heads] (or [layers, T, heads])."""
    if kind not in HEAD_KINDS:
        raise PatchingError(
            f"kind={kind!r} is not a per-head activation; choose one of {HEAD_KINDS}"
        )
    L = model.cfg.n_layers
    names = [hook_name(model, kind, i) for i in range(L)]
    cache = _clean_cache(model, clean_tokens, corrupt_tokens, names)
    T = clean_tokens.shape[-1]
    rows = []
    for name in tqdm(names, desc=f"patch heads ({kind})", leave=False):
        clean = cache[name]
        head_dim = 1 if kind == "pattern" else 2  # pattern [B, H, T, S]; q/z [B, T, H, D]
        H = clean.shape[head_dim]

        def apply(
            view: torch.Tensor, r: int, clean: torch.Tensor = clean, H: int = H, hd: int = head_dim
        ) -> None:
            h, p = (r % H, r // H) if by_position else (r, None)
            if hd == 1:
                if p is None:
                    view[:, h] = clean[:, h]
                else:
                    view[:, h, p] = clean[:, h, p]
            elif p is None:
                view[:, :, h] = clean[:, :, h]
            else:
                view[:, p, h] = clean[:, p, h]

        n = H * T if by_position else H
        res = _batched(model, corrupt_tokens, name, n, apply, metric, chunk)
        rows.append(res.view(T, H) if by_position else res)
    return torch.stack(rows)


def attribution_patch(
    model: Transformer,
    clean_tokens: torch.Tensor,
    corrupt_tokens: torch.Tensor,
    metric: Metric,
    kind: str = "resid_pre",
) -> torch.Tensor:
    """Gradient estimate of `patch_by_position` (kinds in POSITION_KINDS: [layers, T]) or of
    `patch_heads` (kind "z": [layers, heads]), from one clean forward and one corrupted forward+backward."""
    if kind not in POSITION_KINDS and kind != "z":
        raise PatchingError(f"attribution_patch supports {POSITION_KINDS} and 'z', not {kind!r}")
    names = [hook_name(model, kind, i) for i in range(model.cfg.n_layers)]
    clean = _clean_cache(model, clean_tokens, corrupt_tokens, names)
    logits, corrupt = run_with_cache(model, corrupt_tokens, names_filter=names, grads=True)
    acts = [corrupt[n] for n in names]
    grads = torch.autograd.grad(metric(logits).float().mean(), acts)
    out = []
    for name, act, g in zip(names, acts, grads, strict=True):
        delta = (clean[name] - act.detach()) * g  # [B, T, d] or [B, T, H, D]
        out.append(delta.sum(-1).mean(0) if kind != "z" else delta.sum((-1, 1)).mean(0))
    return torch.stack(out)
