"""Text -> token files: `prepare_text` encodes with any tokenizer and writes train/val `.bin` + meta.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from lmlab.data.tokens import TokenDataError, token_dtype, write_meta, write_tokens


class Encoder(Protocol):
    """Anything with `encode(text) -> ids` and `vocab_size` (lmlab tokenizers qualify)."""

    vocab_size: int

    def encode(self, text: str) -> list[int]: ...


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
