"""Tasks with verifiable rewards: rows {"prompt", "answer", ...}, reward functions, an instruction."""

from __future__ import annotations

from pathlib import Path

from lmlab.config import ConfigError
from lmlab.rl.tasks.arithmetic import ArithmeticTask
from lmlab.rl.tasks.base import RLTask
from lmlab.rl.tasks.countdown import CountdownTask
from lmlab.rl.tasks.jsonl import JsonlTask
from lmlab.rl.tasks.riddles import RiddleTask

__all__ = ["ArithmeticTask", "CountdownTask", "JsonlTask", "RLTask", "RiddleTask", "make_task"]


def make_task(name: str, **options) -> RLTask:
    """`arithmetic`, `countdown`, `riddles`, `riddles:PATH` or `jsonl:PATH` -> a task."""
    if name == "arithmetic":
        return ArithmeticTask(**options)
    if name == "countdown":
        return CountdownTask(**options)
    if name == "riddles" or name.startswith("riddles:"):
        return RiddleTask(name.removeprefix("riddles").removeprefix(":") or None, **options)
    if name.startswith("jsonl:"):
        return JsonlTask(Path(name.removeprefix("jsonl:")), **options)
    raise ConfigError(
        f"unknown task {name!r}; use arithmetic, countdown, riddles[:PATH] or jsonl:PATH.jsonl"
    )
