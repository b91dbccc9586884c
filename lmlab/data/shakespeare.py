"""TinyShakespeare: the local copy in `data_dir()`, or a download into the cache."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from lmlab.data.text import prepare_text
from lmlab.paths import cache_dir, data_dir
from lmlab.tokenizers import CharTokenizer

URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
FILENAME = "tinyshakespeare.txt"


def shakespeare_path(download: bool = True) -> Path:
    """Path of tinyshakespeare.txt: `data_dir()` first, then the cache, else download (if allowed)."""
    for p in (data_dir() / FILENAME, cache_dir() / "data" / FILENAME):
        if p.is_file():
            return p
    target = cache_dir() / "data" / FILENAME
    if not download:
        raise FileNotFoundError(
            f"{FILENAME} not found in {data_dir()} or {target.parent}; put it there "
            f"(set LMLAB_DATA) or allow the download from {URL}"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(URL, timeout=30) as r:
            data = r.read()
    except OSError as e:
        raise FileNotFoundError(
            f"could not download {URL} ({e}); offline? put {FILENAME} into {data_dir()} "
            "or set LMLAB_DATA to a folder that has it"
        ) from None
    tmp = target.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.replace(target)
    return target


def shakespeare_text(download: bool = True) -> str:
    """The TinyShakespeare text (about 1.1M characters)."""
    return shakespeare_path(download).read_text(encoding="utf-8")


def prepare_shakespeare_char(
    folder: str | Path | None = None, val_fraction: float = 0.1
) -> tuple[Path, CharTokenizer]:
    """Char-level train.bin/val.bin of TinyShakespeare (65 symbols); returns (folder, vocabulary)."""
    text = shakespeare_text()
    vocab = CharTokenizer.from_text(text)
    folder = Path(folder) if folder else cache_dir() / "data" / "shakespeare_char"
    meta = folder / "meta.json"
    if not (meta.is_file() and (folder / "val.bin").is_file()):
        prepare_text(text, vocab, folder, val_fraction, tokenizer_name="char", chars=vocab.chars)
    return folder, vocab
