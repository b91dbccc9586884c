"""n-digit addition `a+b=` with the answer's digits reversed; loss only on the answer.

`123+456=9750` means 579 (written 0579, reversed): emitting the lowest digit first lets the model
carry left to right, the trick that makes small GPTs learn addition quickly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lmlab.data.tokens import IGNORE_INDEX

CHARS = "0123456789+="
PLUS, EQUALS = 10, 11


def batch_pairs(
    task: Any, split: str, n: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """n operand pairs (a, b) for a batch: fresh training pairs (`task.sample_pairs`, never held
    out), or pairs drawn from the held-out `task.val` / `task.test`."""
    if split == "train":
        return task.sample_pairs(n, generator)
    pa, pb = task.val if split == "val" else task.test
    idx = torch.randint(0, len(pa), (n,), generator=generator)
    return pa[idx], pb[idx]


@dataclass
class AdditionTask:
    """Random pairs of `digits`-digit numbers (zero-padded); `test`/`val` pairs never appear in training."""

    digits: int = 3
    n_test: int = 2000
    n_val: int = 1000
    seed: int = 1234

    vocab_size = len(CHARS)

    def __post_init__(self) -> None:
        if self.digits < 1:
            raise ValueError(f"digits={self.digits} must be >= 1")
        self.limit = 10**self.digits
        space = self.limit**2
        if self.n_test + self.n_val > space // 2:
            raise ValueError(
                f"n_test + n_val = {self.n_test + self.n_val} is too many of the {space} pairs"
            )
        g = torch.Generator().manual_seed(self.seed)
        keys = torch.randperm(space, generator=g)[: self.n_test + self.n_val]
        self.held_out = keys.sort().values
        self.test = (keys[: self.n_test] // self.limit, keys[: self.n_test] % self.limit)
        self.val = (keys[self.n_test :] // self.limit, keys[self.n_test :] % self.limit)
        self.block_size = self.prompt_len + self.answer_len - 1

    @property
    def prompt_len(self) -> int:
        return 2 * self.digits + 2

    @property
    def answer_len(self) -> int:
        return self.digits + 1

    def sample_pairs(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """n training pairs (a, b), resampling any that are held out."""
        keys = torch.randint(0, self.limit**2, (n,), generator=generator)
        while True:
            bad = torch.isin(keys, self.held_out)
            if not bad.any():
                return keys // self.limit, keys % self.limit
            keys[bad] = torch.randint(0, self.limit**2, (int(bad.sum()),), generator=generator)

    def encode(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Full sequences [N, prompt_len + answer_len]: digits of a, +, digits of b, =, reversed sum."""
        d = self.digits
        pw = 10 ** torch.arange(d - 1, -1, -1)
        rev = 10 ** torch.arange(d + 1)
        n = a.shape[0]
        return torch.cat(
            [
                (a[:, None] // pw) % 10,
                torch.full((n, 1), PLUS),
                (b[:, None] // pw) % 10,
                torch.full((n, 1), EQUALS),
                ((a + b)[:, None] // rev) % 10,
            ],
            1,
        )

    def get_batch(
        self, split: str, batch_size: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T] and y [B, T] with -100 everywhere except the answer digits."""
        a, b = batch_pairs(self, split, batch_size, generator)
        seq = self.encode(a, b)
        x, y = seq[:, :-1], seq[:, 1:].clone()
        y[:, : self.prompt_len - 1] = IGNORE_INDEX
        return x, y

    @torch.no_grad()
    def predict(
        self, model: torch.nn.Module, a: torch.Tensor, b: torch.Tensor, batch_size: int = 1000
    ) -> torch.Tensor:
        """Greedy answers (as integers) of `model` for pairs (a, b)."""
        was = model.training
        model.eval()
        out = []
        device = next(model.parameters()).device
        for i in range(0, len(a), batch_size):
            seq = self.encode(a[i : i + batch_size], b[i : i + batch_size])[
                :, : self.prompt_len
            ].to(device)
            for _ in range(self.answer_len):
                nxt = model(seq)[:, -1, :10].argmax(-1, keepdim=True)
                seq = torch.cat([seq, nxt], 1)
            digits = seq[:, self.prompt_len :].cpu()
            out.append((digits * 10 ** torch.arange(self.answer_len)).sum(1))
        model.train(was)
        return torch.cat(out)

    def exact_match(self, model: torch.nn.Module, split: str = "test") -> float:
        """Fraction of held-out pairs answered exactly (greedy decoding)."""
        a, b = self.test if split == "test" else self.val
        return float((self.predict(model, a, b) == a + b).float().mean())

    def samples(self, model: torch.nn.Module, n: int = 5, split: str = "test") -> list[str]:
        """A few held-out problems with the model's answer, e.g. `123+456=579 ✓`."""
        a, b = (t[:n] for t in (self.test if split == "test" else self.val))
        pred = self.predict(model, a, b)
        return [
            f"{x}+{y}={p} {'✓' if p == x + y else '✗ (' + str(int(x + y)) + ')'}"
            for x, y, p in zip(a.tolist(), b.tolist(), pred.tolist(), strict=False)
        ]

    def decode(self, ids: list[int]) -> str:
        return "".join(CHARS[i] for i in ids)
