"""Optimized steering vectors (Subramani et al. 2022): a z that makes a frozen model decode a sentence.

One z [d_model] per target is added to the residual stream entering block `layer` at the chosen
positions ("all" tokens, or only position 0 = "first"); the model reads only `prefix` (e.g. BOS).
z is trained by teacher-forced cross-entropy on the target tokens; a target counts as recovered
when greedy decoding with z reproduces it exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from lmlab.steer.steering_vector import SteeringVector, hook_for


@dataclass
class OptimizeResult:
    """Per target: its z, the step it was first recovered at (None: never) and the loss curve."""

    z: torch.Tensor  # [N, d_model]
    steps_to_recover: list[int | None]
    losses: list[list[float]] = field(default_factory=list)  # per target, one per step it trained
    layer: int = 0
    positions: str = "all"
    prefix: list[int] = field(default_factory=list)

    def vector(self, i: int) -> SteeringVector:
        """Target i's z as a `SteeringVector` (apply it with `positions=self.apply_positions`)."""
        return SteeringVector({hook_for(self.layer): self.z[i]}, meta={"method": "subramani"})

    @property
    def apply_positions(self) -> str | list[int]:
        return [0] if self.positions == "first" else "all"


def _batch(prefix: list[int], targets: list[list[int]], pad: int) -> tuple[torch.Tensor, ...]:
    """tokens [N, T], attention mask [N, T], labels [N, T] (-100 where nothing is predicted)."""
    T = len(prefix) + max(map(len, targets)) - 1
    tokens = torch.full((len(targets), T), pad, dtype=torch.long)
    mask = torch.zeros(len(targets), T, dtype=torch.long)
    labels = torch.full((len(targets), T), -100, dtype=torch.long)
    for b, t in enumerate(targets):
        seq = prefix + t[:-1]
        tokens[b, : len(seq)], mask[b, : len(seq)] = torch.tensor(seq), 1
        labels[b, len(prefix) - 1 : len(prefix) - 1 + len(t)] = torch.tensor(t)
    return tokens, mask, labels


def optimize_vectors(
    model: Any,
    targets: Sequence[Sequence[int]],
    *,
    layer: int,
    prefix: Sequence[int],
    positions: str = "all",
    steps: int = 200,
    lr: float = 0.05,
    max_norm: float | None = None,
    init_std: float = 0.0,
    seed: int = 0,
) -> OptimizeResult:
    """Train one z per target (batched, frozen model); a target leaves the batch once recovered."""
    n = len(model.blocks)
    if not 0 <= layer < n:
        raise ValueError(f"layer={layer} is outside 0..{n - 1} for this {n}-layer model")
    if positions not in ("all", "first"):
        raise ValueError(
            f"positions={positions!r}: use 'all' (every token) or 'first' (position 0)"
        )
    if not targets or any(len(t) == 0 for t in targets):
        raise ValueError("targets must be a non-empty list of non-empty token id lists")
    if not prefix:
        raise ValueError("prefix is empty; give at least one token (e.g. [tokenizer.bos_id])")
    prefix, targets = list(prefix), [list(t) for t in targets]
    dev = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(len(targets), model.cfg.d_model, generator=g) * init_std).to(dev)
    z.requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    name = hook_for(layer)
    done: list[int | None] = [None] * len(targets)
    losses: list[list[float]] = [[] for _ in targets]
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    active = list(range(len(targets)))
    try:
        for step in tqdm(range(1, steps + 1), desc="optimize z", leave=False):
            tokens, mask, labels = (
                t.to(dev) for t in _batch(prefix, [targets[i] for i in active], 0)
            )
            rows = torch.tensor(active, device=dev)
            sel = mask.bool() if positions == "all" else torch.zeros_like(mask, dtype=torch.bool)
            sel[:, 0] = True

            def inject(act: torch.Tensor, hook: Any, rows=rows, sel=sel) -> torch.Tensor:
                return act + sel[..., None].to(act.dtype) * z[rows][:, None, :]

            with torch.enable_grad():
                logits = model.run_with_hooks(
                    tokens, attention_mask=mask, fwd_hooks=[(name, inject)]
                )
                per_tok = F.cross_entropy(
                    logits.transpose(1, 2).float(), labels, ignore_index=-100, reduction="none"
                )
                per_row = per_tok.sum(1) / (labels != -100).sum(1)
                opt.zero_grad()
                per_row.sum().backward()
            with torch.no_grad():
                hit = ((logits.argmax(-1) == labels) | (labels == -100)).all(1)
            for j, i in enumerate(active):
                losses[i].append(float(per_row[j].detach()))
                if bool(hit[j]):
                    done[i] = step - 1  # updates before this forward (0: z at init)
            finished = [i for i in range(len(targets)) if done[i] is not None]
            before = z.detach()[finished].clone()
            opt.step()  # Adam's momentum would move finished rows too: put them back below
            with torch.no_grad():
                z[finished] = before
                if max_norm is not None:
                    norms = z.norm(dim=-1, keepdim=True)
                    z.mul_(torch.clamp(max_norm / norms.clamp(min=1e-12), max=1.0))
            active = [i for i in active if done[i] is None]
            if not active:
                break
    finally:
        for p, f in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(f)
    return OptimizeResult(z.detach(), done, losses, layer, positions, prefix)


@torch.no_grad()
def greedy_recover(model: Any, result: OptimizeResult, lengths: Sequence[int]) -> list[list[int]]:
    """Greedy completions (cached generation, z live at every step) of each target's length."""
    from lmlab.generate import generate

    outs = []
    for i, n_tok in enumerate(lengths):
        with result.vector(i).apply(model, positions=result.apply_positions):
            out = generate(model, [result.prefix], max_new_tokens=n_tok, stop_ids=[])
        outs.append(out.sequences[0])
    return outs
