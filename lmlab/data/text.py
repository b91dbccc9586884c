"""Text -> token files: a character vocabulary and `prepare_text` (train/val split + meta.json)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from lmlab.data.tokens import TokenDataError, token_dtype, write_meta, write_tokens


class Encoder(Protocol):
    """Anything with `encode(text) -> ids` and `vocab_size` (lmlab tokenizers qualify)."""

    vocab_size: int

    def encode(self, text: str) -> list[int]: ...


class CharVocab:
    """Character-level vocabulary: one id per distinct character, in sorted order."""

    def __init__(self, chars: Iterable[str]) -> None:
        self.chars = sorted(set(chars))
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> CharVocab:
        return cls(text)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise TokenDataError(
                f"character {e.args[0]!r} is not in this {self.vocab_size}-character "
                "vocabulary; build the vocabulary from text that contains it"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def to_json(self) -> str:
        return json.dumps(self.chars, ensure_ascii=False)

    @classmethod
    def from_json(cls, s: str) -> CharVocab:
        return cls(json.loads(s))


def prepare_text(
    text: str,
    tokenizer: Encoder,
    folder: str | Path,
    val_fraction: float = 0.1,
    dtype: str | None = None,
    **meta: Any,
) -> Path:
    """Encode `text`, write `train.bin` (first part) and `val.bin` (last `val_fraction`) plus meta.json."""
    if not 0.0 < val_fraction < 1.0:
        raise TokenDataError(f"val_fraction={val_fraction} must be in (0, 1)")
    folder = Path(folder)
    dt = np.dtype(dtype) if dtype else token_dtype(tokenizer.vocab_size)
    write_meta(folder, tokenizer.vocab_size, dt, **meta)  # checks vocab vs dtype first
    ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
    n_val = max(1, int(len(ids) * val_fraction))
    write_tokens(folder / "train.bin", ids[:-n_val], dt)
    write_tokens(folder / "val.bin", ids[-n_val:], dt)
    return folder
