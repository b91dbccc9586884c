"""Resumable, parallel corpus preparer: text, JSONL and parquet files -> token shards (FineWeb style).

Documents: a `.parquet` shard has one per row (its "text" column, read `parquet.BATCH_ROWS` rows
at a time; needs pyarrow); a `.jsonl` file has one per line (its "text" field); for both the field
is `--text-field`. Any other file (`.txt`) is split at blank lines into paragraphs, and a
paragraph longer than 4096 characters (or a file with no blank lines) is cut at line ends into
chunks of at most 4096 characters. Each document starts
with the tokenizer's end-of-text id and goes to val when a hash of its text falls below
`--val-fraction`, so train and val both get data from every large enough file.

Each input becomes `train_NNNNNN.bin` and `val_NNNNNN.bin` in `out`, tokenized about
`ENCODE_CHARS` characters at a time and appended to the shard files as it goes, so memory stays
bounded however large a `.jsonl` or `.parquet` input is (a `.txt` file is read whole). Every input
is read and checked first: a missing file, text that is not in `--encoding` (UTF-8) or holds NUL
bytes, a JSONL line or parquet file without the text field, or a split that would get no document
is an error naming the file and line, raised before `out` is created or written. Finished inputs go into `done.txt` (written by the
parent only, after the shard files are renamed into place), so an interrupted run continues where
it stopped. An `out` holding anything else is refused unless `--overwrite`.

    python -m lmlab.data.prepare corpus/*.txt --out data/corpus --tokenizer gpt2 --workers 8
    python -m lmlab.data.prepare --hub HuggingFaceFW/fineweb-edu --hub-subset sample-10BT \
        --max-shards 2 --out data/fineweb_edu --tokenizer gpt2
"""

from __future__ import annotations

import argparse
import codecs
import hashlib
import json
import os
import re
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from functools import lru_cache
from pathlib import Path
from typing import Any

from tqdm import tqdm

from lmlab.data.tokens import TokenWriter, read_meta, token_dtype, write_meta
from lmlab.errors import DataError, InputError, LmlabError, MissingFileError, OverwriteError

DONE = "done.txt"
CHUNK_CHARS = 4096  # longest .txt document; longer paragraphs are cut at line ends
ENCODE_CHARS = 1 << 20  # documents are tokenized and written in batches of about this many chars
_PARAGRAPH_END = re.compile(r"\n(?:[ \t]*\n)+")  # a blank line (or several) ends a paragraph
_FIX_ENCODING = "convert it to UTF-8 or pass --encoding latin-1 (or its real encoding)"


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


# ---------------------------------------------------------------------- reading documents
def split_text(text: str, chunk: int = CHUNK_CHARS) -> Iterator[str]:
    """Blank-line paragraphs of `text` (each keeps its trailing blank lines), long ones cut into
    chunks of at most `chunk` characters at line ends; whitespace-only pieces are dropped."""
    start = 0
    for m in _PARAGRAPH_END.finditer(text):
        yield from _chunks(text[start : m.end()], chunk)
        start = m.end()
    yield from _chunks(text[start:], chunk)


def _chunks(par: str, chunk: int) -> Iterator[str]:
    while len(par) > chunk:
        cut = par.rfind("\n", 0, chunk) + 1 or chunk  # a line end within reach, else a hard cut
        if par[:cut].strip():
            yield par[:cut]
        par = par[cut:]
    if par.strip():
        yield par


def _decode(data: bytes, encoding: str, where: str, line_base: int = 1) -> str:
    """`data` as text; `DataError` naming the offending byte, offset and line otherwise."""
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        line = line_base + data.count(b"\n", 0, e.start)
        raise DataError(
            f"{where} is not {encoding} text (byte 0x{data[e.start]:02x} at offset {e.start}, "
            f"line {line}); {_FIX_ENCODING}"
        ) from None
    nul = text.find("\x00")
    if nul >= 0:
        raise DataError(
            f"{where} looks binary, not text (NUL character on line "
            f"{line_base + text.count(chr(10), 0, nul)}); pass text files (.txt or .jsonl) or "
            ".parquet shards"
        )
    return text


def documents(path: Path, encoding: str = "utf-8", text_field: str = "text") -> Iterator[str]:
    """The documents of one input file (see the module docstring); errors name file and line."""
    if path.suffix == ".parquet":
        from lmlab.data.parquet import parquet_documents

        yield from parquet_documents(path, text_field)
        return
    if path.suffix != ".jsonl":
        yield from split_text(_decode(path.read_bytes(), encoding, str(path)))
        return
    want = f'{{"{text_field}": "..."}}'
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            line = _decode(raw, encoding, f"{path}:{n}", n)
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{path}:{n} is not valid JSON ({e.msg} at column {e.colno}); each line must "
                    f"be an object like {want}"
                ) from None
            if not isinstance(rec, dict) or text_field not in rec:
                keys = (
                    f"keys {', '.join(map(str, rec))}" if isinstance(rec, dict) else "not an object"
                )
                raise DataError(
                    f'{path}:{n} has no "{text_field}" field ({keys}); each line must be an object '
                    f"like {want} (--text-field names the field)"
                )
            text = rec[text_field]
            if not isinstance(text, str):
                raise DataError(
                    f'{path}:{n}: "{text_field}" is {type(text).__name__}, not a string; '
                    f"each line must be an object like {want}"
                )
            if text.strip():
                yield text


def is_val(doc: str, val_fraction: float) -> bool:
    """Deterministic split: a document is validation when its hash falls below the fraction."""
    h = int.from_bytes(hashlib.blake2b(doc.encode("utf-8"), digest_size=8).digest(), "little")
    return h / 2**64 < val_fraction


# ---------------------------------------------------------------------- workers
Job = tuple[int, str, str, str, float, str, str, str]


def _count_file(job: Job) -> tuple[int, int]:
    """Worker: read and check one input; returns its (train, val) document counts."""
    _, path, _, _, val_fraction, _, encoding, text_field = job
    n_val = n = 0
    for doc in documents(Path(path), encoding, text_field):
        n += 1
        n_val += is_val(doc, val_fraction)
    return n - n_val, n_val


def batched_documents(docs: Iterator[str], chars: int) -> Iterator[list[str]]:
    """`docs` in lists of about `chars` characters (at least one document each)."""
    batch: list[str] = []
    size = 0
    for doc in docs:
        batch.append(doc)
        size += len(doc)
        if size >= chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _encode_file(job: Job) -> tuple[int, str, int]:
    """Worker: tokenize one input into its train/val shard pair, batch by batch, appending to the
    shard files (bounded memory); returns (index, path, tokens)."""
    index, path, out, spec, val_fraction, dtype, encoding, text_field = job
    tok = resolve_tokenizer(spec)
    eos = getattr(tok, "eos_id", None)
    head = [eos] if eos is not None else []
    with (
        TokenWriter(Path(out) / f"train_{index:06d}.bin", dtype) as train,
        TokenWriter(Path(out) / f"val_{index:06d}.bin", dtype) as val,
    ):
        for docs in batched_documents(documents(Path(path), encoding, text_field), ENCODE_CHARS):
            flat: dict[str, list[int]] = {"train": [], "val": []}
            for doc in docs:  # one encode per document: faster than tiktoken's thread pool here
                split = flat["val" if is_val(doc, val_fraction) else "train"]
                split += head
                split += tok.encode(doc)
            train.write(flat["train"])
            val.write(flat["val"])
            del flat, docs
    return index, path, train.count + val.count


# ---------------------------------------------------------------------- checks
def _check_inputs(
    inputs: list[str], out: Path, val_fraction: float, workers: int, encoding: str
) -> None:
    if not 0.0 <= val_fraction <= 1.0:
        raise InputError(f"--val-fraction {val_fraction} must be between 0 and 1 (e.g. 0.01)")
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise InputError(f"unknown --encoding {encoding!r}; use e.g. utf-8 or latin-1") from None
    if workers < 1:
        raise InputError(f"--workers {workers} must be >= 1")
    if not inputs:
        raise InputError("no input files; pass .txt, .jsonl or .parquet files (or --hub REPO)")
    for p in inputs:
        if not Path(p).exists():
            raise MissingFileError(
                f"input {p} does not exist; check the path (nothing was written)"
            )
        if not Path(p).is_file():
            raise InputError(
                f"input {p} is not a file; pass .txt, .jsonl or .parquet files, not folders"
            )
    if out.exists() and not out.is_dir():
        raise OverwriteError(f"--out {out} is a file; choose a folder path")


def _ours(out: Path) -> list[Path]:
    """The files a prepare run writes in `out`."""
    names = {"meta.json", DONE, "train.bin", "val.bin"}
    return [
        p for p in out.iterdir() if p.name in names or re.fullmatch(r"(train|val)_\d+\.bin", p.name)
    ]


def _check_out(out: Path, settings: dict[str, Any], overwrite: bool) -> bool:
    """Whether `out` continues an earlier run with the same settings; refuses other contents."""
    if not out.is_dir() or not any(out.iterdir()):
        return False
    if (out / "meta.json").is_file():
        try:
            meta = {"encoding": "utf-8", "text_field": "text", **read_meta(out)}
        except DataError as e:
            meta, what = None, f"holds a damaged meta.json ({e})"
        if meta is not None:
            diff = [
                f"{k} {meta.get(k)!r} -> {v!r}" for k, v in settings.items() if meta.get(k) != v
            ]
            if not diff:
                return True
            what = f"was prepared with other settings ({', '.join(diff)})"
    else:
        what = "holds other files"
    if not overwrite:
        raise OverwriteError(
            f"--out {out} {what}; use a new --out folder, or pass --overwrite to replace the "
            "prepared data there (other files are kept)"
        )
    for p in _ours(out):
        p.unlink()
    return False


def _check_splits(counts: list[tuple[int, int]], inputs: list[str], val_fraction: float) -> None:
    """`DataError` if the train or val split would get no document."""
    n_train, n_val = sum(c[0] for c in counts), sum(c[1] for c in counts)
    names = ", ".join(inputs) if len(inputs) <= 3 else f"the {len(inputs)} inputs"
    if n_train + n_val == 0:
        raise DataError(f"no text in {names}: every input is empty; add data")
    if n_val == 0:
        raise DataError(
            f"the val split would be empty: none of the {n_train} documents of {names} falls in "
            f"--val-fraction {val_fraction}; raise --val-fraction or add data (.txt files are "
            "split into documents at blank lines)"
        )
    if n_train == 0:
        raise DataError(
            f"the train split would be empty: all {n_val} documents of {names} went to val at "
            f"--val-fraction {val_fraction}; lower --val-fraction or add data"
        )


def _done_counts(out: Path, inputs: list[str], done: set[str]) -> list[tuple[int, int]]:
    """(train, val) "has data" flags of inputs finished by an earlier run, from their shards."""

    def has(split: str, i: int) -> int:
        p = out / f"{split}_{i:06d}.bin"
        return int(p.is_file() and p.stat().st_size > 0)

    return [(has("train", i), has("val", i)) for i, p in enumerate(inputs) if p in done]


# ---------------------------------------------------------------------- prepare
def prepare(
    inputs: list[str | Path],
    out: str | Path,
    tokenizer: str = "gpt2",
    workers: int = 1,
    val_fraction: float = 0.01,
    encoding: str = "utf-8",
    overwrite: bool = False,
    text_field: str = "text",
) -> dict[str, int]:
    """Tokenize `inputs` into shards in `out`, skipping inputs listed in `out/done.txt`.

    Inputs are read and checked before `out` is created; errors are `LmlabError`s naming the file
    and line. An `out` prepared with other settings, or holding other files, is an `OverwriteError`
    unless `overwrite` (which deletes only the prepared data there). `text_field` names the JSONL
    field / parquet column holding the text."""
    out = Path(out)
    inputs = [str(Path(p)) for p in inputs]
    _check_inputs(inputs, out, val_fraction, workers, encoding)
    tok = resolve_tokenizer(tokenizer)
    dtype = token_dtype(tok.vocab_size)
    settings = {"tokenizer": tokenizer, "inputs": inputs, "val_fraction": val_fraction,
                "encoding": encoding, "text_field": text_field}  # fmt: skip
    resuming = _check_out(out, settings, overwrite)
    done_file = out / DONE
    done = set(done_file.read_text().splitlines()) if resuming and done_file.is_file() else set()
    jobs = [
        (i, p, str(out), tokenizer, val_fraction, dtype.name, encoding, text_field)
        for i, p in enumerate(inputs)
        if p not in done
    ]
    total = 0
    with ExitStack() as stack:
        pool = (
            stack.enter_context(ProcessPoolExecutor(min(workers, len(jobs))))
            if workers > 1 and len(jobs) > 1
            else None
        )
        run = pool.map if pool else map
        counts = list(run(_count_file, jobs))
        _check_splits(counts + _done_counts(out, inputs, done), inputs, val_fraction)
        if not resuming:
            write_meta(out, tok.vocab_size, dtype, **settings)
        log = stack.enter_context(open(done_file, "a"))
        bar = stack.enter_context(
            tqdm(total=len(inputs), initial=len(inputs) - len(jobs), desc="prepare", unit="file")
        )
        for _, path, n in run(_encode_file, jobs):
            log.write(path + "\n")
            log.flush()
            os.fsync(log.fileno())
            total += n
            bar.update(1)
    return {"files": len(inputs), "processed": len(jobs), "tokens": total}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "inputs",
        nargs="*",
        help=".txt files (split at blank lines), .jsonl files or .parquet shards",
    )
    ap.add_argument("--out", required=True, help="output folder for shards, meta.json and done.txt")
    ap.add_argument(
        "--tokenizer", default="gpt2", help='"bytes", "gpt2", "o200k_harmony" or a tokenizer folder'
    )
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--val-fraction", type=float, default=0.01)
    ap.add_argument("--encoding", default="utf-8", help="text encoding of the inputs (utf-8)")
    ap.add_argument("--text-field", default="text", help="JSONL field / parquet column (text)")
    ap.add_argument("--hub", metavar="REPO", help="also fetch shards of this hub dataset (online)")
    ap.add_argument("--hub-subset", default=None, help="folder or config, e.g. sample-10BT")
    ap.add_argument("--hub-pattern", default="*.parquet", help="shard file pattern (*.parquet)")
    ap.add_argument("--max-shards", type=int, default=1, help="hub shards to fetch (1)")
    ap.add_argument(
        "--overwrite",
        action="store_true",
        help="replace data prepared in --out with other settings",
    )
    a = ap.parse_args(argv)
    try:
        inputs = list(a.inputs)
        if a.hub:
            from lmlab.data.hub import fetch_shards

            inputs += fetch_shards(a.hub, a.hub_subset, a.hub_pattern, a.max_shards)
        stats = prepare(
            inputs,
            a.out,
            a.tokenizer,
            a.workers,
            a.val_fraction,
            a.encoding,
            a.overwrite,
            a.text_field,
        )
    except LmlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(stats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
