"""Repeated random tokens: the second copy is predictable only by induction (copy what followed last time)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmlab.data.tokens import IGNORE_INDEX


def induction_batch(
    batch_size: int,
    seq_len: int,
    vocab_size: int,
    generator: torch.Generator | None = None,
    bos: int | None = None,
) -> torch.Tensor:
    """Tokens [B, 2 * seq_len] (plus a leading `bos` if given): random ids, then the same ids again."""
    if seq_len < 1 or vocab_size < 2:
        raise ValueError(
            f"need seq_len >= 1 and vocab_size >= 2, got seq_len={seq_len}, vocab_size={vocab_size}"
        )
    low = 0 if bos is None else 1  # keep the bos id out of the random part when bos = 0
    first = torch.randint(low, vocab_size, (batch_size, seq_len), generator=generator)
    toks = torch.cat([first, first], 1)
    if bos is not None:
        toks = torch.cat([torch.full((batch_size, 1), bos), toks], 1)
    return toks


@dataclass
class InductionTask:
    """Train/eval batches of repeated random tokens; loss only on the repeated half."""

    vocab_size: int = 64
    seq_len: int = 32
    bos: int | None = 0

    @property
    def block_size(self) -> int:
        return 2 * self.seq_len + (self.bos is not None) - 1

    def get_batch(
        self, split: str, batch_size: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        toks = induction_batch(batch_size, self.seq_len, self.vocab_size, generator, self.bos)
        x, y = toks[:, :-1], toks[:, 1:].clone()
        first = self.seq_len + (self.bos is not None) - 1  # y index of the first repeated token
        y[:, :first] = IGNORE_INDEX
        return x, y
