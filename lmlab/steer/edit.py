"""Knowledge edits by injection: the gradient direction toward a new answer, added at the subject.

In the spirit of Hernandez et al. 2023 (REMEDI): the edit lives on the subject entity's
representation, so it fires wherever the subject appears (paraphrases) and nowhere else.
The direction is minus the gradient of -log p(target | prompt) with respect to the residual
stream entering `layer` at the subject's last token: one backward pass, no training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from lmlab.interp.activation_cache import run_with_cache
from lmlab.steer.steering_vector import SteeringVector, hook_for


def find_subject(tokens: Sequence[int], subject: Sequence[int]) -> list[int]:
    """Positions of the last occurrence of `subject` inside `tokens` ([] when absent)."""
    s, n = list(subject), len(subject)
    for start in range(len(tokens) - n, -1, -1):
        if list(tokens[start : start + n]) == s:
            return list(range(start, start + n))
    return []


def subject_positions(
    subject: Sequence[int], which: str = "last"
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A positions rule: the subject's last token ("last") or all its tokens ("all") in each row."""
    if not subject:
        raise ValueError("subject has no tokens; encode the subject text first")
    if which not in ("last", "all"):
        raise ValueError(f"which={which!r}: use 'last' or 'all'")
    subject = list(subject)

    def rule(tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(tokens.shape, dtype=torch.bool, device=tokens.device)
        for b, row in enumerate(tokens.tolist()):
            hits = find_subject(row, subject)
            for p in hits[-1:] if which == "last" else hits:
                out[b, p] = True
        return out

    return rule


def gradient_direction(
    model: Any,
    prompt: Sequence[int],
    target: int,
    layer: int,
    position: int,
    hook: str = "resid_pre",
) -> torch.Tensor:
    """Unit vector [d]: minus d(-log p(target | prompt)) / d(activation at `position`, `layer`)."""
    n = len(model.blocks)
    if not 0 <= layer < n:
        raise ValueError(f"layer={layer} is outside 0..{n - 1} for this {n}-layer model")
    name = hook_for(layer, hook)
    dev = next(model.parameters()).device
    tokens = torch.tensor([list(prompt)], device=dev)
    logits, cache = run_with_cache(model, tokens, names_filter=name, grads=True)
    loss = F.cross_entropy(logits[0, -1:].float(), torch.tensor([target], device=dev))
    (grad,) = torch.autograd.grad(loss, cache[name])
    g = -grad[0, position].float()
    return g / g.norm().clamp(min=1e-12)


@dataclass
class InjectionEdit:
    """A subject-anchored edit: `vector` applied with `positions`; `apply(model)` steers."""

    vector: SteeringVector
    positions: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    coeff: float

    def apply(self, model: Any) -> Any:
        """Context manager with the edit live."""
        return self.vector.apply(model, multiplier=self.coeff, positions=self.positions)


def injection_edit(
    model: Any,
    prompt: Sequence[int],
    subject: Sequence[int],
    target: int,
    layer: int,
    coeff: float,
    hook: str = "resid_pre",
    which: str = "all",
) -> InjectionEdit:
    """Gradient direction at the subject's last token, injected with `coeff` at the subject's tokens
    (`which`="all") or its last token only ("last"), in every prompt that contains the subject."""
    hits = find_subject(prompt, subject)
    if not hits:
        raise ValueError(
            "the subject's tokens do not occur in the prompt; encode both the same way"
        )
    d = gradient_direction(model, prompt, target, layer, hits[-1], hook)
    sv = SteeringVector({hook_for(layer, hook): d}, meta={"method": "gradient-injection"})
    return InjectionEdit(sv, subject_positions(subject, which), coeff)


@torch.no_grad()
def next_token_probs(
    model: Any, prompts: Sequence[Sequence[int]], batch_size: int = 16
) -> torch.Tensor:
    """Next-token probabilities after each prompt: [N, vocab] (right-padded batches)."""
    dev = next(model.parameters()).device
    out = []
    for s in range(0, len(prompts), batch_size):
        rows = [list(p) for p in prompts[s : s + batch_size]]
        T = max(map(len, rows))
        tokens = torch.zeros(len(rows), T, dtype=torch.long, device=dev)
        mask = torch.zeros(len(rows), T, dtype=torch.long, device=dev)
        for b, r in enumerate(rows):
            tokens[b, : len(r)], mask[b, : len(r)] = torch.tensor(r), 1
        logits = model(tokens, attention_mask=mask)
        last = mask.sum(1) - 1
        out.append(logits[torch.arange(len(rows)), last].float().softmax(-1).cpu())
    return torch.cat(out)
