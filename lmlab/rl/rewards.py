"""Reward functions `f(prompts, completions, **columns) -> list[float]` and their weighted sum."""

from __future__ import annotations

import math
import re
import string
from collections.abc import Callable, Sequence
from typing import Any

import torch

from lmlab.errors import LmlabError

RewardFn = Callable[..., list[float]]
ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
# one <answer> block with content, at the very end; free text (reasoning) may come before it
FORMAT = re.compile(
    r"^(?:(?!<answer>).)*<answer>(?:(?!</?answer>).)*\S(?:(?!</?answer>).)*</answer>\s*$", re.DOTALL
)
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


class RewardError(LmlabError, ValueError):
    """A reward function raised, or returned something other than one number per completion."""


def reward_name(fn: RewardFn) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


def combine_rewards(
    funcs: Sequence[RewardFn],
    prompts: list[str],
    completions: list[str],
    weights: Sequence[float] | None = None,
    **columns: list[Any],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum [N] of every function's rewards, and each function's rewards by name.

    A function may return None for a completion it does not judge; that entry counts as 0.
    """
    if not funcs:
        raise RewardError(
            "no reward functions: pass at least one f(prompts, completions, **columns)"
        )
    weights = [1.0] * len(funcs) if weights is None else list(weights)
    if len(weights) != len(funcs):
        raise RewardError(
            f"{len(weights)} reward weights for {len(funcs)} reward functions; give one weight each"
        )
    total = torch.zeros(len(completions))
    per: dict[str, torch.Tensor] = {}
    for fn, w in zip(funcs, weights, strict=True):
        name = reward_name(fn)
        try:
            values = fn(prompts, completions, **columns)
        except Exception as e:
            raise RewardError(f"reward function {name!r} raised {type(e).__name__}: {e}") from e
        if not isinstance(values, (list, tuple)) or len(values) != len(completions):
            got = len(values) if isinstance(values, (list, tuple)) else type(values).__name__
            raise RewardError(
                f"reward function {name!r} returned {got} values for {len(completions)} "
                "completions; return a list with one float per completion"
            )
        try:
            r = torch.tensor([math.nan if v is None else float(v) for v in values])
        except (TypeError, ValueError) as e:
            raise RewardError(f"reward function {name!r} returned a non-number: {e}") from e
        per[name] = r
        total += w * torch.nan_to_num(r, nan=0.0)
    return total, per


def extract_answer(text: str) -> str | None:
    """Content of the last `<answer>...</answer>` block, stripped, or None."""
    found = ANSWER.findall(text)
    return found[-1].strip() if found else None


def format_reward(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
    """1 when the completion ends with exactly one non-empty `<answer>...</answer>` block."""
    return [1.0 if FORMAT.match(c) else 0.0 for c in completions]


def parse_number(text: str | None) -> float | None:
    """The last number in `text` (commas ignored), or None."""
    if text is None:
        return None
    found = NUMBER.findall(text.replace(",", ""))
    return float(found[-1]) if found else None


def numeric_correctness(
    prompts: list[str], completions: list[str], answer: list[Any], **_: Any
) -> list[float]:
    """1 when the number inside <answer></answer> equals the reference answer."""
    out = []
    for c, a in zip(completions, answer, strict=True):
        got = parse_number(extract_answer(c))
        out.append(1.0 if got is not None and abs(got - float(a)) < 1e-6 else 0.0)
    return out


def normalize(text: str) -> str:
    """Lowercase, drop punctuation and articles, collapse whitespace (SQuAD-style)."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


def exact_match(
    prompts: list[str], completions: list[str], answer: list[Any], **_: Any
) -> list[float]:
    """1 when the <answer> content equals the reference exactly (after stripping)."""
    return [
        1.0 if extract_answer(c) == str(a).strip() else 0.0
        for c, a in zip(completions, answer, strict=True)
    ]


def normalized_match(
    prompts: list[str], completions: list[str], answer: list[Any], **_: Any
) -> list[float]:
    """1 when the <answer> content equals the reference after `normalize`."""
    out = []
    for c, a in zip(completions, answer, strict=True):
        got = extract_answer(c)
        out.append(1.0 if got is not None and normalize(got) == normalize(str(a)) else 0.0)
    return out


def answer_or_alias_match(
    prompts: list[str],
    completions: list[str],
    answer: list[Any],
    aliases: list[Sequence[str]] | None = None,
    **_: Any,
) -> list[float]:
    """1 when the <answer> content equals the reference or one of its aliases after `normalize`."""
    aliases = aliases if aliases is not None else [()] * len(completions)
    out = []
    for c, a, al in zip(completions, answer, aliases, strict=True):
        got = extract_answer(c)
        accepted = {normalize(str(x)) for x in (a, *al)}
        out.append(1.0 if got is not None and normalize(got) in accepted else 0.0)
    return out


MIN_REASONING_WORDS = 3
MAX_ANSWER_WORDS = 5


def reasoning_format_reward(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
    """Reasoning, then a short final answer: 1.0 for at least `MIN_REASONING_WORDS` words before one
    non-empty `<answer>...</answer>` of at most `MAX_ANSWER_WORDS` words that ends the completion;
    0.5 for one such closed block ending it without that shape (no reasoning, or a long answer);
    0 otherwise (no closed block, an empty one, two blocks, or text after it)."""
    out = []
    for c in completions:
        if not FORMAT.match(c):
            out.append(0.0)
            continue
        before, _, rest = c.partition("<answer>")
        n_answer = len(rest.partition("</answer>")[0].split())
        shaped = len(before.split()) >= MIN_REASONING_WORDS and n_answer <= MAX_ANSWER_WORDS
        out.append(1.0 if shaped else 0.5)
    return out
