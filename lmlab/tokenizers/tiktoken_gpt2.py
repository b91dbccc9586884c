"""GPT-2's tokenizer through tiktoken, built offline from a local `.tiktoken` rank file."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from lmlab.tokenizers.base import Tokenizer, TokenizerError, unknown_id, write_manifest
from lmlab.tokenizers.bpe import (
    ENDOFTEXT,
    GPT2_EOT,
    GPT2_PATTERN,
    GPT2_RANKS_FILE,
    default_ranks_path,
    read_tiktoken_ranks,
)

FILE = GPT2_RANKS_FILE  # the rank file a saved tokenizer folder holds


class TiktokenTokenizer(Tokenizer):
    """A `tiktoken.Encoding` behind the lmlab interface; special-token text is always allowed."""

    def __init__(self, ranks_path: str | Path, *, name: str = "gpt2") -> None:
        import tiktoken

        self.ranks_path = Path(ranks_path)
        ranks = read_tiktoken_ranks(self.ranks_path)
        self.special_tokens = {ENDOFTEXT: GPT2_EOT}
        self.enc = tiktoken.Encoding(
            name=name,
            pat_str=GPT2_PATTERN,
            mergeable_ranks=ranks,
            special_tokens=self.special_tokens,
        )
        self.bos_id = self.eos_id = GPT2_EOT
        self.pad_id = None
        self.chat_template = None

    def encode(self, text: str, *, add_special: bool = False) -> list[int]:
        """tiktoken ids; `add_special` prepends `<|endoftext|>` (GPT-2's BOS)."""
        ids = self.enc.encode(text, allowed_special="all")
        return [GPT2_EOT, *ids] if add_special else ids

    def encode_batch(self, texts: list[str], *, add_special: bool = False) -> list[list[int]]:
        """tiktoken's threaded batch encode."""
        out = self.enc.encode_batch(texts, allowed_special="all")
        return [[GPT2_EOT, *ids] for ids in out] if add_special else out

    def decode(self, ids: Iterable[int], *, skip_special: bool = False) -> str:
        """Text of `ids`."""
        ids = [int(i) for i in ids if not (skip_special and int(i) == GPT2_EOT)]
        bad = next((i for i in ids if not 0 <= i < self.vocab_size), None)
        if bad is not None:
            raise unknown_id(bad, self.vocab_size)
        return self.enc.decode(ids, errors="replace")

    def id_to_bytes(self, i: int) -> bytes:
        """Bytes of token `i`."""
        if not 0 <= int(i) < self.vocab_size:
            raise unknown_id(i, self.vocab_size)
        return self.enc.decode_single_token_bytes(int(i))

    @property
    def vocab_size(self) -> int:
        """50257 for GPT-2."""
        return self.enc.n_vocab

    def save(self, folder: str | Path) -> Path:
        """Copy the rank file next to a manifest."""
        folder = write_manifest(folder, "tiktoken", file=FILE)
        if self.ranks_path.resolve() != (folder / FILE).resolve():
            shutil.copyfile(self.ranks_path, folder / FILE)
        return folder


def gpt2_tiktoken(path: str | Path | None = None) -> TiktokenTokenizer:
    """GPT-2's tokenizer from a local rank file (default `data_dir()/gpt2.tiktoken`); no network."""
    p = Path(path) if path is not None else default_ranks_path()
    if not p.is_file():
        raise TokenizerError(
            f"GPT-2 rank file {p} not found; copy gpt2.tiktoken into {p.parent} (or set LMLAB_DATA), "
            "e.g. download https://openaipublic.blob.core.windows.net/encodings/gpt2.tiktoken"
        )
    return TiktokenTokenizer(p)
