"""Riddles from a JSONL file ({"riddle", "answer", "aliases"}), split so no test answer is trained on."""

from __future__ import annotations

import json
import random
from importlib.resources import files
from pathlib import Path
from typing import Any

from lmlab.errors import DataError, MissingFileError
from lmlab.rl.rewards import answer_or_alias_match, normalize, reasoning_format_reward
from lmlab.rl.tasks.base import RLTask

INSTRUCTION = (
    "Solve the riddle. Think briefly in one or two sentences, then give only the final answer "
    "inside <answer></answer> tags."
)
# a riddle outside the sample set, with an answer none of its riddles has
SHOT = (
    "What has blades but cuts nothing, and grows under your feet?",
    "Its blades are thin green leaves that grow in a lawn. <answer>grass</answer>",
)
KEYS = {"riddle", "answer", "aliases"}


def sample_path() -> Path:
    """The riddle set that ships with lmlab: traditional public-domain folk riddles."""
    return Path(str(files("lmlab") / "data" / "samples" / "riddles.jsonl"))


def read_riddles(path: str | Path) -> list[dict[str, Any]]:
    """Rows {"prompt", "answer", "aliases"} from a JSONL file; blank lines and `#` lines are skipped.

    Each line is {"riddle": str, "answer": str, "aliases": [str, ...]} ("aliases" optional); a bad
    line raises `DataError` naming file:line, what is wrong and the fix."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"riddle file {str(path)!r} does not exist; check the path")
    rows: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where} is not valid JSON ({e}); write one object per line") from None
        rows.append(_row(obj, where))
        key = normalize(rows[-1]["prompt"])
        if key in seen:
            raise DataError(f"{where} repeats the riddle of line {seen[key]}; remove one of them")
        seen[key] = n
    if len(rows) < 2:
        raise DataError(f"{path} has {len(rows)} riddles; need at least 2 (train and test)")
    return rows


def _row(obj: Any, where: str) -> dict[str, Any]:
    fix = 'write {"riddle": "...", "answer": "...", "aliases": ["...", ...]}'
    if not isinstance(obj, dict):
        raise DataError(f"{where} is a JSON {type(obj).__name__}, not an object; {fix}")
    unknown = sorted(set(obj) - KEYS)
    if unknown or "riddle" not in obj or "answer" not in obj:
        what = f"unknown keys {unknown}" if unknown else f"keys {sorted(obj)} lack riddle/answer"
        raise DataError(f"{where} has {what}; {fix}")
    for key in ("riddle", "answer"):
        if not isinstance(obj[key], str) or not normalize(obj[key]):
            raise DataError(f"{where}: {key} {obj[key]!r} must be a non-empty string; {fix}")
    aliases = obj.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a.strip() for a in aliases):
        raise DataError(f"{where}: aliases {aliases!r} must be a list of non-empty strings; {fix}")
    return {"prompt": obj["riddle"], "answer": obj["answer"], "aliases": aliases}


def split_riddles(
    rows: list[dict[str, Any]], test_fraction: float = 0.25, seed: int = 0
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, test): riddles whose answers or aliases overlap stay on one side, so the policy
    never trains on a test riddle nor on one with the same answer; groups are shuffled with
    `seed` and the test side takes them until it holds about `test_fraction` of the rows."""
    if not 0 < test_fraction < 1:
        raise DataError(f"test_fraction={test_fraction} must be between 0 and 1 (e.g. 0.25)")
    parent = list(range(len(rows)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for i, r in enumerate(rows):
        for name in (r["answer"], *r["aliases"]):
            j = owner.setdefault(normalize(name), i)
            parent[root(i)] = root(j)
    groups: dict[int, list[dict[str, Any]]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(root(i), []).append(r)
    order = list(groups.values())
    random.Random(seed).shuffle(order)
    target = max(1, round(len(rows) * test_fraction))
    train: list[dict[str, Any]] = []
    test: list[dict[str, Any]] = []
    for g in order:
        (test if len(test) + len(g) <= target or not test else train).extend(g)
    if not train:
        raise DataError(
            f"all {len(rows)} riddles share answers, so no train/test split is possible; "
            "add riddles with other answers"
        )
    return train, test


def RiddleTask(
    path: str | Path | None = None, test_fraction: float = 0.25, seed: int = 0, shot: bool = True
) -> RLTask:
    """Riddles (default: the shipped sample) with rewards: answer or alias match (weight 1) and
    reasoning-then-answer format (weight 0.5). `shot` adds one solved riddle before each one."""
    rows = read_riddles(sample_path() if path is None else path)
    train, test = split_riddles(rows, test_fraction, seed)
    return RLTask(
        train=train,
        test=test,
        reward_funcs=[answer_or_alias_match, reasoning_format_reward],
        reward_weights=[1.0, 0.5],
        instruction=INSTRUCTION,
        correctness="answer_or_alias_match",
        shots=[SHOT] if shot else [],
    )
