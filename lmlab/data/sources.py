"""Resolve a `TrainConfig.data` string to a data source: a token folder, TinyShakespeare, or a task."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmlab.config import ConfigError, check_keys
from lmlab.data.tokens import TokenData


@dataclass
class Source:
    """A data source with its vocabulary size, block size and (if known) a decoder for samples."""

    data: Any
    vocab_size: int
    block_size: int
    decode: Callable[[list[int]], str] | None = None


def make_data(spec: str, block_size: int, options: dict[str, Any] | None = None) -> Source:
    """`"shakespeare-char"`, `"task:NAME"` (options go to the task), or a prepared token folder."""
    options = dict(options or {})
    if spec == "shakespeare-char":
        from lmlab.data.shakespeare import prepare_shakespeare_char

        folder, vocab = prepare_shakespeare_char()
        return Source(TokenData(folder, block_size), vocab.vocab_size, block_size, vocab.decode)
    if spec.startswith("task:"):
        from lmlab.data.tasks import TASKS

        name = spec.removeprefix("task:")
        if name not in TASKS:
            near = difflib.get_close_matches(name, list(TASKS), n=2)
            hint = f" Did you mean {' or '.join(f'task:{n}' for n in near)}?" if near else ""
            raise ConfigError(
                f"unknown task {name!r}.{hint} Known: {', '.join('task:' + t for t in TASKS)}"
            )
        check_keys(options, TASKS[name])
        task = TASKS[name](**options)
        return Source(task, task.vocab_size, task.block_size, getattr(task, "decode", None))
    folder = Path(spec)
    if not folder.is_dir():
        raise ConfigError(
            f"data={spec!r} is neither a prepared token folder nor 'shakespeare-char' nor "
            "'task:addition|addition-cot|induction|trigram|maxsort'; prepare a folder with "
            "`python -m lmlab.data.prepare FILES --out DIR` and pass data=DIR"
        )
    data = TokenData(folder, block_size)
    return Source(data, data.vocab_size, block_size)
