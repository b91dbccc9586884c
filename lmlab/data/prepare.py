"""Resumable, parallel corpus preparer: text files -> token shards (FineWeb style).

Each input file (`.txt`: one document; `.jsonl`: one document per line's "text") becomes
`train_NNNNNN.bin` and `val_NNNNNN.bin` in `out`; documents are split into val by a hash of
their content. Finished inputs go into `done.txt` (written by the parent only, after the shard
files are renamed into place), so an interrupted run continues where it stopped.

    python -m lmlab.data.prepare corpus/*.jsonl --out data/fineweb10 --tokenizer gpt2 --workers 8
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from lmlab.data.tokens import TokenDataError, read_meta, token_dtype, write_meta, write_tokens

DONE = "done.txt"


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255 plus id 256 as the end-of-document token."""

    vocab_size = 257
    eos_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))


@lru_cache(maxsize=4)
def resolve_tokenizer(spec: str) -> Any:
    """ "bytes", or anything `lmlab.tokenizers.load_tokenizer` accepts ("gpt2", a folder, ...)."""
    if spec == "bytes":
        return ByteTokenizer()
    from lmlab.tokenizers import load_tokenizer  # the weights/tokenizers issue provides it

    return load_tokenizer(spec)


def documents(path: Path) -> Iterator[str]:
    """The documents of one input file."""
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)["text"]
    else:
        yield path.read_text(encoding="utf-8")


def is_val(doc: str, val_fraction: float) -> bool:
    """Deterministic split: a document is validation when its hash falls below the fraction."""
    h = int.from_bytes(hashlib.blake2b(doc.encode("utf-8"), digest_size=8).digest(), "little")
    return h / 2**64 < val_fraction


def _encode_file(job: tuple[int, str, str, str, float, str]) -> tuple[int, str, int]:
    """Worker: tokenize one input file into its train/val shard pair; returns (index, path, tokens)."""
    index, path, out, spec, val_fraction, dtype = job
    tok = resolve_tokenizer(spec)
    eos = getattr(tok, "eos_id", None)
    parts: dict[str, list[list[int]]] = {"train": [], "val": []}
    for doc in documents(Path(path)):
        ids = tok.encode(doc)
        parts["val" if is_val(doc, val_fraction) else "train"].append(
            ([eos] if eos is not None else []) + ids
        )
    n = 0
    for split, docs in parts.items():
        flat = np.fromiter((i for d in docs for i in d), dtype=np.int64)
        n += len(flat)
        write_tokens(Path(out) / f"{split}_{index:06d}.bin", flat, dtype)
    return index, path, n


def prepare(
    inputs: list[str | Path],
    out: str | Path,
    tokenizer: str = "gpt2",
    workers: int = 1,
    val_fraction: float = 0.01,
) -> dict[str, int]:
    """Tokenize `inputs` into shards in `out`, skipping inputs listed in `out/done.txt`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    inputs = [str(Path(p)) for p in inputs]
    for p in inputs:
        if not Path(p).is_file():
            raise FileNotFoundError(f"input {p!r} does not exist")
    tok = resolve_tokenizer(tokenizer)
    dtype = token_dtype(tok.vocab_size)
    if (out / "meta.json").is_file():
        meta = read_meta(out)
        if meta.get("tokenizer") != tokenizer or meta.get("inputs") != inputs:
            raise TokenDataError(
                f"{out} was prepared from other inputs or tokenizer ({meta.get('tokenizer')!r}); "
                "use a new --out folder or delete this one"
            )
    else:
        write_meta(
            out,
            tok.vocab_size,
            dtype,
            tokenizer=tokenizer,
            inputs=inputs,
            val_fraction=val_fraction,
        )
    done_file = out / DONE
    done = set(done_file.read_text().splitlines()) if done_file.is_file() else set()
    jobs = [
        (i, p, str(out), tokenizer, val_fraction, dtype.name)
        for i, p in enumerate(inputs)
        if p not in done
    ]
    total = 0
    with ExitStack() as stack:
        log = stack.enter_context(open(done_file, "a"))
        bar = stack.enter_context(
            tqdm(total=len(inputs), initial=len(inputs) - len(jobs), desc="prepare", unit="file")
        )
        pool = (
            stack.enter_context(ProcessPoolExecutor(workers))
            if workers > 1 and len(jobs) > 1
            else None
        )
        for _, path, n in pool.map(_encode_file, jobs) if pool else map(_encode_file, jobs):
            log.write(path + "\n")
            log.flush()
            os.fsync(log.fileno())
            total += n
            bar.update(1)
    return {"files": len(inputs), "processed": len(jobs), "tokens": total}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("inputs", nargs="+", help=".txt or .jsonl files")
    ap.add_argument("--out", required=True, help="output folder for shards, meta.json and done.txt")
    ap.add_argument("--tokenizer", default="gpt2", help='"bytes", "gpt2" or a tokenizer folder')
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--val-fraction", type=float, default=0.01)
    a = ap.parse_args(argv)
    print(prepare(a.inputs, a.out, a.tokenizer, a.workers, a.val_fraction))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
