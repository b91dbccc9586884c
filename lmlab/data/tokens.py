"""Token ids in `uint16`/`uint32` memmap `.bin` files with a train/val split and a `meta.json`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmlab.errors import DataError
from lmlab.linear_cross_entropy import IGNORE_INDEX  # noqa: F401  (label value the loss skips)
from lmlab.runs import atomic_write, tmp_name


class TokenDataError(DataError):
    """Token data lmlab cannot use; the message names the file, the value and the fix."""


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype holding every id below `vocab_size` (uint16 or uint32)."""
    if vocab_size <= 0:
        raise TokenDataError(f"vocab_size={vocab_size} must be positive")
    if vocab_size <= 2**16:
        return np.dtype(np.uint16)
    if vocab_size <= 2**32:
        return np.dtype(np.uint32)
    raise TokenDataError(
        f"vocab_size={vocab_size} does not fit uint32 token files; use a smaller vocabulary"
    )


def write_tokens(path: str | Path, ids: Any, dtype: str | np.dtype = "uint16") -> Path:
    """Write token ids to a flat `.bin` file (atomically); ids must fit `dtype`."""
    dtype = np.dtype(dtype)
    arr = np.asarray(ids)
    if arr.size and (arr.min() < 0 or arr.max() > np.iinfo(dtype).max):
        raise TokenDataError(
            f"token id {int(arr.max() if arr.max() > 0 else arr.min())} does not fit {dtype.name} "
            f"(max {np.iinfo(dtype).max}) in {path}; write with dtype='uint32' (vocab > 65536)"
        )
    atomic_write(path, arr.astype(dtype).tobytes())
    return Path(path)


class TokenWriter:
    """Append token ids to a flat `.bin` file chunk by chunk, in bounded memory.

    Writes go to a temporary file in the same folder; `close()` fsyncs and renames it into place,
    so readers never see half a file. Leaving the `with` block on an error removes the temporary.
    """

    def __init__(self, path: str | Path, dtype: str | np.dtype = "uint16") -> None:
        self.path, self.dtype, self.count = Path(path), np.dtype(dtype), 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(tmp_name(self.path.name))
        self._f = open(self._tmp, "wb")  # noqa: SIM115  (closed by close/discard)

    def write(self, ids: Any) -> None:
        """Append `ids` (any int sequence or array); they must fit the dtype."""
        arr = np.asarray(ids, dtype=np.int64)
        if arr.size and (arr.min() < 0 or arr.max() > np.iinfo(self.dtype).max):
            bad = int(arr.max() if arr.max() > 0 else arr.min())
            raise TokenDataError(
                f"token id {bad} does not fit {self.dtype.name} (max {np.iinfo(self.dtype).max}) "
                f"in {self.path}; write with dtype='uint32' (vocab > 65536)"
            )
        self._f.write(arr.astype(self.dtype).tobytes())
        self.count += int(arr.size)

    def close(self) -> Path:
        """Flush, fsync and rename the file into place; returns its path."""
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self._tmp, self.path)
        return self.path

    def discard(self) -> None:
        """Drop what was written (the final path is left untouched)."""
        self._f.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> TokenWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()


def write_meta(folder: str | Path, vocab_size: int, dtype: str | np.dtype, **extra: Any) -> None:
    """Write `meta.json` (vocab size, dtype, tokenizer name, ...) beside the `.bin` files."""
    dtype = np.dtype(dtype)
    if vocab_size - 1 > np.iinfo(dtype).max:
        raise TokenDataError(
            f"vocab_size={vocab_size} is larger than {dtype.name} can hold (max id {np.iinfo(dtype).max}); "
            f"use dtype={token_dtype(vocab_size).name}"
        )
    meta = {"vocab_size": int(vocab_size), "dtype": dtype.name, **extra}
    atomic_write(Path(folder) / "meta.json", json.dumps(meta, indent=1) + "\n")


def read_meta(folder: str | Path) -> dict[str, Any]:
    """The `meta.json` of a prepared token folder."""
    p = Path(folder) / "meta.json"
    if not p.is_file():
        raise TokenDataError(
            f"{p} not found; prepare the folder with lmlab.data.text.prepare_text or "
            "`python -m lmlab.data.prepare`"
        )
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise TokenDataError(f"{p} is not valid JSON ({e}); prepare the folder again") from None
    if not isinstance(meta, dict):
        raise TokenDataError(f"{p} is not a JSON object; prepare the folder again")
    return meta


def _meta_fields(meta: dict[str, Any], where: Path) -> tuple[int, np.dtype]:
    """`vocab_size` and `dtype` of a meta.json, or `TokenDataError` naming what is wrong."""
    try:
        vocab, dtype = int(meta["vocab_size"]), np.dtype(meta["dtype"])
    except (KeyError, TypeError, ValueError) as e:
        raise TokenDataError(
            f"{where}: needs an integer vocab_size and a dtype (uint16 or uint32); got "
            f"vocab_size={meta.get('vocab_size')!r}, dtype={meta.get('dtype')!r} ({e})"
        ) from None
    if dtype not in (np.uint16, np.uint32):
        raise TokenDataError(f"{where}: dtype={dtype.name!r} must be uint16 or uint32")
    return vocab, dtype


class TokenData:
    """Random contiguous windows from memmapped token files, nanoGPT style.

    `folder` holds `meta.json` and either `train.bin`/`val.bin` or shards `train_*.bin`/`val_*.bin`.
    """

    def __init__(self, folder: str | Path, block_size: int) -> None:
        self.folder = Path(folder)
        self.meta = read_meta(self.folder)
        self.vocab_size, self.dtype = _meta_fields(self.meta, self.folder / "meta.json")
        if self.vocab_size - 1 > np.iinfo(self.dtype).max:
            raise TokenDataError(
                f"{self.folder}/meta.json: vocab_size={self.vocab_size} is larger than "
                f"{self.dtype.name} can hold; re-prepare with dtype={token_dtype(self.vocab_size).name}"
            )
        self.block_size = block_size
        self.splits = {s: self._open(s) for s in ("train", "val")}

    def _open(self, split: str) -> list[np.memmap]:
        files = (
            [self.folder / f"{split}.bin"]
            if (self.folder / f"{split}.bin").is_file()
            else sorted(self.folder.glob(f"{split}_*.bin"))
        )
        if not files:
            raise TokenDataError(
                f"no {split}.bin or {split}_*.bin in {self.folder}; prepare the data first"
            )
        for f in files:
            if f.stat().st_size % self.dtype.itemsize:
                raise TokenDataError(
                    f"{f} has {f.stat().st_size} bytes, not a whole number of {self.dtype.name} "
                    "tokens: it is truncated or not token data; prepare the folder again"
                )
        need = (self.block_size + 1) * self.dtype.itemsize  # an empty file cannot be memmapped
        shards = [
            np.memmap(f, dtype=self.dtype, mode="r") for f in files if f.stat().st_size >= need
        ]
        if not shards:
            longest = max(files, key=lambda f: f.stat().st_size)
            n = longest.stat().st_size // self.dtype.itemsize
            if n == 0:
                raise TokenDataError(
                    f"the {split} split of {self.folder} is empty (every {split} file has 0 "
                    "tokens); prepare it again with `python -m lmlab.data.prepare` (it checks that "
                    "both splits get data), with more text or another --val-fraction"
                )
            raise TokenDataError(
                f"{split} data in {self.folder} is shorter than one block: longest file "
                f"{longest.name} has {n} tokens, block_size={self.block_size} needs at least "
                f"{self.block_size + 1}; use a smaller block_size or more text"
            )
        return shards

    def num_tokens(self, split: str) -> int:
        """Total tokens in a split."""
        return sum(len(s) for s in self.splits[split])

    def get_batch(
        self, split: str, batch_size: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y: int64 [batch_size, block_size], y = x shifted by one."""
        shards = self.splits[split]
        T = self.block_size
        if len(shards) == 1:
            which = torch.zeros(batch_size, dtype=torch.long)
        else:
            sizes = torch.tensor([len(s) - T for s in shards], dtype=torch.float64)
            which = torch.multinomial(
                sizes / sizes.sum(), batch_size, replacement=True, generator=generator
            )
        starts = (
            torch.rand(batch_size, generator=generator, dtype=torch.float64)
            * torch.tensor([len(shards[w]) - T for w in which.tolist()], dtype=torch.float64)
        ).long()
        rows = [
            np.asarray(shards[w][s : s + T + 1], dtype=np.int64)
            for w, s in zip(which.tolist(), starts.tolist(), strict=False)
        ]
        buf = torch.from_numpy(np.stack(rows))
        return buf[:, :-1].contiguous(), buf[:, 1:].contiguous()
