"""Countdown: combine the given numbers with + - * / (each at most once) to reach a target."""

from __future__ import annotations

import ast
import random
from collections import Counter
from typing import Any

from lmlab.rl.rewards import extract_answer, format_reward
from lmlab.rl.tasks.base import RLTask, unique_rows

INSTRUCTION = (
    "Write an equation that uses the given numbers (each at most once) with + - * / and equals "
    "the target. Reply with only the equation inside <answer></answer> tags, like <answer>(3 + 5) * 2</answer>."
)
OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
       ast.Div: lambda a, b: a / b}  # fmt: skip


def evaluate(expr: str) -> tuple[float, list[int]]:
    """Value of an arithmetic expression and the integers it uses; ValueError if not plain arithmetic."""
    used: list[int] = []

    def walk(node: ast.AST) -> float:
        if isinstance(node, ast.BinOp) and type(node.op) in OPS:
            return OPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            used.append(node.value)
            return node.value
        raise ValueError(f"not allowed in an equation: {ast.dump(node)[:40]}")

    try:
        return walk(ast.parse(expr.replace("×", "*").replace("÷", "/"), mode="eval").body), used
    except (SyntaxError, ZeroDivisionError, RecursionError) as e:
        raise ValueError(str(e)) from e


def countdown_correctness(
    prompts: list[str],
    completions: list[str],
    target: list[int],
    numbers: list[list[int]],
    **_: Any,
) -> list[float]:
    """1 when the <answer> equation uses only the given numbers (each once at most) and hits the target."""
    out = []
    for c, t, nums in zip(completions, target, numbers, strict=True):
        expr = extract_answer(c)
        try:
            value, used = evaluate(expr or "")
        except ValueError:
            out.append(0.0)
            continue
        ok = not Counter(used) - Counter(nums) and abs(value - t) < 1e-6
        out.append(1.0 if ok else 0.0)
    return out


def puzzle(rng: random.Random, n_numbers: int, max_number: int) -> dict:
    """Numbers and a target reachable by a random expression over all of them."""
    while True:
        nums = [rng.randint(1, max_number) for _ in range(n_numbers)]
        expr = str(nums[0])
        for x in nums[1:]:
            expr = f"({expr} {rng.choice('+-*')} {x})"
        value, _ = evaluate(expr)
        if 0 < value <= 100 and value == int(value):
            prompt = f"Numbers: {', '.join(map(str, nums))}. Target: {int(value)}."
            return {"prompt": prompt, "answer": expr, "target": int(value), "numbers": nums}


def CountdownTask(
    n_train: int = 2000, n_test: int = 200, n_numbers: int = 3, max_number: int = 10, seed: int = 0
) -> RLTask:
    """Disjoint train/test puzzles; rewards: correctness (1) and format (0.5)."""
    rng = random.Random(seed)
    rows = unique_rows(lambda: puzzle(rng, n_numbers, max_number), n_train + n_test)
    return RLTask(
        train=rows[n_test:],
        test=rows[:n_test],
        reward_funcs=[countdown_correctness, format_reward],
        reward_weights=[1.0, 0.5],
        instruction=INSTRUCTION,
        correctness="countdown_correctness",
    )
