"""Any JSONL of prompt/answer pairs (riddles, trivia) scored by exact or normalized match."""

from __future__ import annotations

import json
import random
from pathlib import Path

from lmlab.config import ConfigError
from lmlab.rl.rewards import exact_match, format_reward, normalized_match
from lmlab.rl.tasks.base import RLTask


def JsonlTask(
    path: Path,
    prompt_key: str = "prompt",
    answer_key: str = "answer",
    match: str = "normalized",
    test_fraction: float = 0.1,
    seed: int = 0,
) -> RLTask:
    """Rows from `path` (one JSON object per line); a shuffled `test_fraction` is held out."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"JSONL file {str(path)!r} does not exist; pass task = 'jsonl:PATH'")
    if match not in ("exact", "normalized"):
        raise ConfigError(f"match={match!r}: use 'exact' or 'normalized'")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{n} is not valid JSON: {e}") from None
        if prompt_key not in obj or answer_key not in obj:
            raise ConfigError(
                f"{path}:{n} has keys {sorted(obj)}; each line needs {prompt_key!r} and "
                f"{answer_key!r} (set prompt_key / answer_key in task_options)"
            )
        rows.append({**obj, "prompt": obj[prompt_key], "answer": obj[answer_key]})
    if len(rows) < 2:
        raise ConfigError(f"{path} has {len(rows)} rows; need at least 2 (train and test)")
    random.Random(seed).shuffle(rows)
    n_test = max(1, int(len(rows) * test_fraction))
    correct = exact_match if match == "exact" else normalized_match
    return RLTask(
        train=rows[n_test:],
        test=rows[:n_test],
        reward_funcs=[correct, format_reward],
        reward_weights=[1.0, 0.5],
        instruction="Reply with only the final answer inside <answer></answer> tags.",
        correctness=correct.__name__,
    )
