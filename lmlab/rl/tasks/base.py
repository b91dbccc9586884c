"""What every RL task provides: train/test rows, reward functions with weights, an instruction."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lmlab.rl.rewards import RewardFn

ANSWER_INSTRUCTION = "Write the calculation, then the final answer inside <answer></answer> tags."


@dataclass
class RLTask:
    """Rows are dicts with at least "prompt" (str) and "answer"; other keys reach rewards as columns."""

    train: list[dict[str, Any]]
    test: list[dict[str, Any]]
    reward_funcs: list[RewardFn]
    reward_weights: list[float] | None = None
    instruction: str = ANSWER_INSTRUCTION
    correctness: str = ""  # name of the reward function that measures correctness
    shots: list[tuple[str, str]] = field(default_factory=list)  # (question, reply) demonstrations
    extra: dict[str, Any] = field(default_factory=dict)


def unique_rows(make: Callable[[], dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """`n` rows from repeated `make()` calls, no two with the same prompt (so splits are disjoint)."""
    seen: set[str] = set()
    rows: list[dict[str, Any]] = []
    while len(rows) < n:
        row = make()
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            rows.append(row)
    return rows
