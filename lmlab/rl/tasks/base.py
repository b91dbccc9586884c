"""What every RL task provides: train/test rows, reward functions with weights, an instruction."""

from __future__ import annotations

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
