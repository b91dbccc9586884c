"""Max or sort of a list: `x1 ... xn SEP answer`, loss only on the answer."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmlab.data.tokens import IGNORE_INDEX


@dataclass
class MaxSortTask:
    """`kind="max"`: answer is the largest item; `kind="sort"`: the items in ascending order."""

    kind: str = "sort"
    length: int = 8
    max_value: int = 64

    def __post_init__(self) -> None:
        if self.kind not in ("max", "sort"):
            raise ValueError(f"kind={self.kind!r} must be 'max' or 'sort'")
        self.sep = self.max_value
        self.vocab_size = self.max_value + 1

    @property
    def answer_len(self) -> int:
        return 1 if self.kind == "max" else self.length

    @property
    def block_size(self) -> int:
        return self.length + self.answer_len

    def get_batch(
        self, split: str, batch_size: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        items = torch.randint(0, self.max_value, (batch_size, self.length), generator=generator)
        ans = items.max(1, keepdim=True).values if self.kind == "max" else items.sort(1).values
        seq = torch.cat([items, torch.full((batch_size, 1), self.sep), ans], 1)
        x, y = seq[:, :-1], seq[:, 1:].clone()
        y[:, : self.length] = IGNORE_INDEX
        return x, y
