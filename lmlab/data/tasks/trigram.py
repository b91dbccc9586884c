"""Sequences from a random sparse trigram language: each (a, b) has a few likely next tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TrigramTask:
    """A fixed random table p(c | a, b) (seeded) with `branching` allowed successors per context."""

    vocab_size: int = 32
    block_size: int = 64
    branching: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        V = self.vocab_size
        g = torch.Generator().manual_seed(self.seed)
        logits = torch.full((V, V, V), float("-inf"))
        succ = torch.rand(V, V, V, generator=g).argsort(-1)[..., : self.branching]
        logits.scatter_(-1, succ, torch.randn(V, V, self.branching, generator=g))
        self.probs = logits.softmax(-1)  # [V, V, V]

    def entropy(self) -> float:
        """Mean conditional entropy over contexts (nats): the loss floor under uniform contexts."""
        p = self.probs
        return float(-(p * p.clamp_min(1e-12).log()).sum(-1).mean())

    def get_batch(
        self, split: str, batch_size: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        V, T = self.vocab_size, self.block_size + 1
        seq = torch.empty(batch_size, T, dtype=torch.long)
        seq[:, :2] = torch.randint(0, V, (batch_size, 2), generator=generator)
        for t in range(2, T):
            seq[:, t] = torch.multinomial(
                self.probs[seq[:, t - 2], seq[:, t - 1]], 1, generator=generator
            )[:, 0]
        return seq[:, :-1], seq[:, 1:]
