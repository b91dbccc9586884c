"""Addition with a written scratchpad (chain of thought) or a direct answer, on variable-length operands.

Scratchpad format: after the prompt `a+b=` the model writes one step per digit column, from the
least significant digit, then the answer in normal order and `$` (end):

    123+989=3+9+0=12;2+8+1=11;1+9+1=11;1112$

A step `x+y+c=ts` reads: digit x of a, digit y of b (0 past a shorter operand's end), carry-in c,
and the column total x+y+c written as two digits, t the carry-out and s the sum digit. There are
max(len(a), len(b)) steps; the answer is the last carry (when 1) then the sum digits reversed.

Direct format (the baseline): the answer with its digits reversed, as `lmlab.data.tasks.addition`
writes it (least significant digit first): `123+989=2111$`.

Operands are written without leading zeros; a `digits`-range operand first draws its length
uniformly, then its value uniformly among numbers of that length (0-9 for one digit).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from lmlab.data.tasks.addition import batch_pairs
from lmlab.data.tokens import IGNORE_INDEX
from lmlab.errors import InputError

CHARS = "0123456789+=;$"
END = CHARS.index("$")
_STEP = re.compile(r"(\d)\+(\d)\+([01])=([01])(\d)")


def digits_of(n: int) -> list[int]:
    """Decimal digits of n >= 0, least significant first (`[0]` for 0)."""
    return [int(c) for c in reversed(str(n))]


def steps(a: int, b: int) -> list[str]:
    """The scratchpad steps `x+y+c=ts` of a+b, least significant column first."""
    da, db = digits_of(a), digits_of(b)
    out, carry = [], 0
    for i in range(max(len(da), len(db))):
        x = da[i] if i < len(da) else 0
        y = db[i] if i < len(db) else 0
        total = x + y + carry
        out.append(f"{x}+{y}+{carry}={total // 10}{total % 10}")
        carry = total // 10
    return out


def completion(a: int, b: int, scratchpad: bool = True) -> str:
    """What the model should write after `a+b=`: steps and answer, or the reversed answer; `$` ends."""
    if not scratchpad:
        return str(a + b)[::-1] + "$"
    return "".join(s + ";" for s in steps(a, b)) + str(a + b) + "$"


def parse_step(step: str) -> tuple[int, int, int, int, int] | None:
    """(x, y, carry_in, carry_out, digit) of a step `x+y+c=ts`; None if it is malformed."""
    m = _STEP.fullmatch(step)
    return None if m is None else tuple(int(g) for g in m.groups())  # type: ignore[return-value]


@dataclass
class Worked:
    """A completion split into its steps and its answer; `done` when it ended with `$`."""

    steps: list[str]
    answer: str
    done: bool


def split_completion(text: str, scratchpad: bool = True) -> Worked:
    """Steps and answer of a (possibly generated, possibly malformed) completion."""
    done = "$" in text
    body = text.split("$", 1)[0]
    if not scratchpad:
        return Worked([], body[::-1], done)
    parts = body.split(";")
    return Worked(parts[:-1], parts[-1], done)


def sum_from_steps(parsed: list[tuple[int, int, int, int, int]]) -> tuple[int, int, int]:
    """(a, b, a+b) rebuilt from parsed steps alone (digits, and the last step's carry-out)."""
    a = sum(x * 10**i for i, (x, *_rest) in enumerate(parsed))
    b = sum(y * 10**i for i, (_x, y, *_rest) in enumerate(parsed))
    total = sum(s * 10**i for i, (*_rest, s) in enumerate(parsed))
    total += parsed[-1][3] * 10 ** len(parsed) if parsed else 0
    return a, b, total


@dataclass(frozen=True)
class FirstError:
    """Where a completion first departs from the true work: `step` is the 0-based step index (the
    digit column from the right), `len(true steps)` for the answer; `part` says what was wrong."""

    step: int
    part: str  # "operand digit", "carry in", "column sum", "malformed step", "missing step",
    # "extra step", "answer"


def first_wrong_step(text: str, a: int, b: int) -> FirstError | None:
    """The first step of a generated scratchpad completion that differs from the true one, or
    None when every step and the answer are right."""
    true = steps(a, b)
    got = split_completion(text)
    for k, want in enumerate(true):
        if k >= len(got.steps):
            return FirstError(k, "missing step")
        if got.steps[k] == want:
            continue
        step = parse_step(got.steps[k])
        if step is None:
            return FirstError(k, "malformed step")
        x, y, c, *_ = parse_step(want)  # type: ignore[misc]
        if step[:2] != (x, y):
            return FirstError(k, "operand digit")
        return FirstError(k, "carry in" if step[2] != c else "column sum")
    if len(got.steps) > len(true):
        return FirstError(len(true), "extra step")
    if got.answer != str(a + b) or not got.done:
        return FirstError(len(true), "answer")
    return None


def sample_operands(
    n: int, digits: tuple[int, int], generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """n pairs whose operands each have a length drawn uniformly from digits=(lo, hi), then a
    value drawn uniformly among the numbers of that length."""
    lo, hi = digits
    if not 1 <= lo <= hi:
        raise InputError(f"digits=({lo}, {hi}) must satisfy 1 <= lo <= hi, e.g. (1, 3)")

    def one() -> torch.Tensor:
        length = torch.randint(lo, hi + 1, (n,), generator=generator)
        low = torch.where(length == 1, 0, 10 ** (length - 1))
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        return low + (u * (10**length - low)).long()

    return one(), one()


def encode(text: str) -> list[int]:
    """Token ids of a string over `CHARS`."""
    bad = sorted(set(text) - set(CHARS))
    if bad:
        raise InputError(f"characters {bad} are not in the addition vocabulary {CHARS!r}")
    return [CHARS.index(c) for c in text]


def decode(ids: list[int]) -> str:
    """The string of token ids."""
    return "".join(CHARS[i] for i in ids)


def seq_len(digits: int, scratchpad: bool) -> int:
    """Tokens of the longest sequence with `digits`-digit operands (prompt, completion, `$`)."""
    biggest = 10**digits - 1
    return len(f"{biggest}+{biggest}=") + len(completion(biggest, biggest, scratchpad))


@dataclass
class AdditionCoTTask:
    """Training batches of `a+b=` + completion (loss on the completion only), held-out pairs.

    Operands have 1..`max_digits` digits; `n_val + n_test` such pairs are held out of training.
    `longer` test sets have both operands exactly d digits for each d in `test_digits`.
    """

    max_digits: int = 3
    scratchpad: bool = True
    test_digits: tuple[int, ...] = (4, 5)
    n_test: int = 1000
    n_val: int = 500
    seed: int = 1234

    vocab_size = len(CHARS)

    def __post_init__(self) -> None:
        if self.max_digits < 1:
            raise InputError(f"max_digits={self.max_digits} must be >= 1")
        if any(d < 1 for d in self.test_digits):
            raise InputError(f"test_digits={list(self.test_digits)} must all be >= 1, e.g. [4, 5]")
        self.limit = 10**self.max_digits
        g = torch.Generator().manual_seed(self.seed)
        a, b = sample_operands(4 * (self.n_test + self.n_val), (1, self.max_digits), g)
        keys = torch.unique(a * self.limit + b, sorted=False)
        keys = keys[torch.randperm(len(keys), generator=g)][: self.n_test + self.n_val]
        if len(keys) < self.n_test + self.n_val:
            raise InputError(
                f"n_test + n_val = {self.n_test + self.n_val} held-out pairs is too many for "
                f"{self.max_digits}-digit operands; lower n_test or n_val"
            )
        self.held_out = keys.sort().values
        self.test = (keys[: self.n_test] // self.limit, keys[: self.n_test] % self.limit)
        self.val = (keys[self.n_test :] // self.limit, keys[self.n_test :] % self.limit)
        self.longer = {
            d: sample_operands(self.n_test, (d, d), g) for d in sorted(set(self.test_digits))
        }
        self.block_size = max(self.max_len(d) for d in (self.max_digits, *self.test_digits)) - 1

    def max_len(self, digits: int) -> int:
        return seq_len(digits, self.scratchpad)

    def sample_pairs(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """n training pairs, resampling any that are held out."""
        a, b = sample_operands(n, (1, self.max_digits), generator)
        while True:
            bad = torch.isin(a * self.limit + b, self.held_out)
            if not bad.any():
                return a, b
            a2, b2 = sample_operands(int(bad.sum()), (1, self.max_digits), generator)
            a[bad], b[bad] = a2, b2

    def text(self, a: int, b: int) -> str:
        return f"{a}+{b}=" + completion(a, b, self.scratchpad)

    def encode_pairs(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [N, T] and y [N, T]: sequences padded with `$`; labels only on each completion."""
        rows = [encode(self.text(x, y)) for x, y in zip(a.tolist(), b.tolist(), strict=True)]
        width = max(map(len, rows))
        seq = torch.full((len(rows), width), END)
        y = torch.full((len(rows), width - 1), IGNORE_INDEX)
        for i, (row, x) in enumerate(zip(rows, a.tolist(), strict=True)):
            seq[i, : len(row)] = torch.tensor(row)
            start = (
                len(f"{x}+{int(b[i])}=") - 1
            )  # the target at input '=' is the first written token
            y[i, start : len(row) - 1] = seq[i, start + 1 : len(row)]
        return seq[:, :-1], y

    def get_batch(
        self, split: str, batch_size: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T], y [B, T] (-100 on the prompt and the padding)."""
        return self.encode_pairs(*batch_pairs(self, split, batch_size, generator))

    def decode(self, ids: list[int]) -> str:
        return decode(ids)


@torch.no_grad()
def complete(
    model: torch.nn.Module, prompts: list[str], max_new: int, batch_size: int = 500
) -> list[str]:
    """Greedy completions (up to and including `$`) of `prompts`, batched by prompt length so that
    learned positions see no padding."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[str] = [""] * len(prompts)
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(len(p), []).append(i)
    for idx in by_len.values():
        for j in range(0, len(idx), batch_size):
            chunk = idx[j : j + batch_size]
            seq = torch.tensor([encode(prompts[i]) for i in chunk], device=device)
            start = seq.shape[1]
            done = torch.zeros(len(chunk), dtype=torch.bool, device=device)
            limit = getattr(getattr(model, "cfg", None), "max_seq_len", start + max_new)
            for _ in range(min(max_new, limit - start)):
                nxt = model(seq)[:, -1].argmax(-1)
                seq = torch.cat([seq, nxt[:, None]], 1)
                done |= nxt == END
                if bool(done.all()):
                    break
            for i, row in zip(chunk, seq[:, start:].tolist(), strict=True):
                text = decode(row)
                out[i] = text[: text.index("$") + 1] if "$" in text else text
    model.train(was)
    return out
