"""Arithmetic word problems (add, take away, groups of) with a numeric answer in <answer> tags."""

from __future__ import annotations

import random

from lmlab.rl.rewards import format_reward, numeric_correctness
from lmlab.rl.tasks.base import RLTask, unique_rows

NAMES = ["Tom", "Ann", "Sam", "Lily", "Max", "Mia", "Ben", "Zoe", "Leo", "Eva"]
ITEMS = ["apples", "pens", "books", "cards", "coins", "shells", "stickers", "marbles"]
TEMPLATES = [
    ("{n} has {a} {i}. {n} gets {b} more {i}. How many {i} does {n} have now?", lambda a, b: a + b),
    ("{n} has {a} {i} and gives away {b}. How many {i} are left?", lambda a, b: a - b),
    (
        "{n} buys {a} boxes with {b} {i} in each box. How many {i} is that in total?",
        lambda a, b: a * b,
    ),
    (
        "There are {a} {i} on a table. {n} puts {b} more on it. How many {i} are on the table?",
        lambda a, b: a + b,
    ),
]


def problem(rng: random.Random, max_number: int) -> dict:
    """One random problem: {"prompt", "answer"} (answers are non-negative integers)."""
    text, op = rng.choice(TEMPLATES)
    a, b = rng.randint(2, max_number), rng.randint(2, max_number)
    if op(5, 3) == 2 and b > a:
        a, b = b, a
    if op(5, 3) == 15:
        a, b = rng.randint(2, 9), rng.randint(2, 9)
    prompt = text.format(n=rng.choice(NAMES), i=rng.choice(ITEMS), a=a, b=b)
    return {"prompt": prompt, "answer": op(a, b)}


SHOT = "Kim has 3 cups. Kim gets 4 more cups. How many cups does Kim have now?"


def ArithmeticTask(
    n_train: int = 2000, n_test: int = 200, max_number: int = 20, seed: int = 0, shot: bool = True
) -> RLTask:
    """Disjoint train/test word problems; rewards: correctness (weight 1) and format (weight 0.5).

    `shot` adds one solved example turn before each problem (a demonstration of the reply format).
    """
    rng = random.Random(seed)
    rows = unique_rows(lambda: problem(rng, max_number), n_train + n_test)
    return RLTask(
        train=rows[n_test:],
        test=rows[:n_test],
        reward_funcs=[numeric_correctness, format_reward],
        reward_weights=[1.0, 0.5],
        correctness="numeric_correctness",
        shots=[(SHOT, "3 + 4 = 7 <answer>7</answer>")] if shot else [],
    )
