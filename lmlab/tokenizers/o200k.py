"""`o200k_harmony`, gpt-oss's tokenizer: OpenAI's o200k_base ranks plus the harmony special tokens.

The ranks come from a local `o200k_base.tiktoken` file, looked for in this order: the path given,
`data_dir()/o200k_base.tiktoken` (`$LMLAB_DATA`), lmlab's download cache
(`cache_dir()/o200k_base.tiktoken`), tiktoken's own cache (`$TIKTOKEN_CACHE_DIR`, else
`<tmp>/data-gym-cache`); only then is it downloaded (when `HF_HUB_OFFLINE`/`LMLAB_OFFLINE` is not
set) and checked against its published SHA-256. Offline without the file is one `TokenizerError`.

Special-token ids follow tiktoken's own `o200k_harmony` definition (source checked:
`tiktoken_ext/openai_public.py` of tiktoken 0.14.0; 201088 ids also stated in Modal's "What is
o200k Harmony?", modal.com/blog/what-is-o200k-harmony):
`<|startoftext|>` 199998, `<|endoftext|>` 199999, `<|return|>` 200002, `<|constrain|>` 200003,
`<|channel|>` 200005, `<|start|>` 200006, `<|end|>` 200007, `<|message|>` 200008, `<|call|>`
200012, o200k_base's `<|endofprompt|>` 200018, and `<|reserved_N|>` for every other id up to
201087 (201088 ids in all). tiktoken also names 200018 `<|reserved_200018|>` (a duplicate,
openai/tiktoken#457); lmlab keeps only `<|endofprompt|>` so each id decodes one way.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from lmlab.paths import cache_dir, data_dir
from lmlab.tokenizers.base import Tokenizer, TokenizerError, unknown_id, write_manifest
from lmlab.tokenizers.bpe import read_tiktoken_ranks

KIND = "o200k_harmony"
RANKS_FILE = "o200k_base.tiktoken"
RANKS_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
RANKS_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
VOCAB_SIZE = 201088
STARTOFTEXT, ENDOFTEXT = 199998, 199999
# o200k_base's pre-tokenizer: cased words with contractions, numbers in groups of 1-3 digits.
O200K_PATTERN = "|".join(
    [
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"\p{N}{1,3}",
        r" ?[^\s\p{L}\p{N}]+[\r\n/]*",
        r"\s*[\r\n]+",
        r"\s+(?!\S)",
        r"\s+",
    ]
)
_NAMED = {
    "startoftext": STARTOFTEXT,
    "endoftext": ENDOFTEXT,
    "return": 200002,
    "constrain": 200003,
    "channel": 200005,
    "start": 200006,
    "end": 200007,
    "message": 200008,
    "call": 200012,
    "endofprompt": 200018,
}


def harmony_special_tokens() -> dict[str, int]:
    """Every special token of o200k_harmony (ids 199998..201087), name -> id."""
    named = {f"<|{k}|>": v for k, v in _NAMED.items()}
    taken = set(named.values())
    reserved = {f"<|reserved_{i}|>": i for i in range(ENDOFTEXT + 1, VOCAB_SIZE) if i not in taken}
    return named | reserved


def offline() -> bool:
    """`HF_HUB_OFFLINE` or `LMLAB_OFFLINE` is set to a true value (read now)."""
    return any(
        os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
        for k in ("HF_HUB_OFFLINE", "LMLAB_OFFLINE")
    )


def _tiktoken_cache_file() -> Path | None:
    """Where tiktoken caches the rank file (named by the SHA-1 of its URL); None if disabled."""
    env = os.environ.get("TIKTOKEN_CACHE_DIR", os.environ.get("DATA_GYM_CACHE_DIR"))
    if env == "":
        return None
    folder = Path(env) if env else Path(tempfile.gettempdir()) / "data-gym-cache"
    return folder / hashlib.sha1(RANKS_URL.encode()).hexdigest()


def candidate_paths() -> list[Path]:
    """The local places the rank file is looked for, in order."""
    paths = [data_dir() / RANKS_FILE, cache_dir() / RANKS_FILE]
    tk = _tiktoken_cache_file()
    return paths + ([tk] if tk is not None else [])


def find_ranks() -> Path | None:
    """The first local `o200k_base.tiktoken` (see `candidate_paths`), or None; no network."""
    return next((p for p in candidate_paths() if p.is_file()), None)


def _download(timeout: float = 60.0) -> Path:
    """Fetch the rank file into lmlab's cache, checking its SHA-256; `TokenizerError` otherwise."""
    import urllib.request

    from lmlab.runs import atomic_write

    fix = (
        f"copy {RANKS_FILE} into {data_dir()} (or set LMLAB_DATA), e.g. from {RANKS_URL}, "
        "or prepare the data with --tokenizer gpt2"
    )
    try:
        with urllib.request.urlopen(RANKS_URL, timeout=timeout) as r:
            data = r.read()
    except (OSError, ValueError) as e:
        raise TokenizerError(f"cannot download {RANKS_FILE} ({e}); {fix}") from None
    if hashlib.sha256(data).hexdigest() != RANKS_SHA256:
        raise TokenizerError(f"downloaded {RANKS_FILE} has the wrong SHA-256; try again or {fix}")
    return atomic_write(cache_dir() / RANKS_FILE, data)


def o200k_ranks_path(path: str | Path | None = None, *, download: bool | None = None) -> Path:
    """A local `o200k_base.tiktoken`: `path`, else a found copy, else a download when allowed.

    `download=None` downloads unless `HF_HUB_OFFLINE`/`LMLAB_OFFLINE` is set."""
    if path is not None:
        if not Path(path).is_file():
            raise TokenizerError(
                f"o200k rank file {path} not found; pass the path of {RANKS_FILE} ({RANKS_URL})"
            )
        return Path(path)
    found = find_ranks()
    if found is not None:
        return found
    if download is False or (download is None and offline()):
        raise TokenizerError(
            f"tokenizer o200k_harmony needs {RANKS_FILE}, not found in "
            f"{', '.join(str(p.parent) for p in candidate_paths())}, and downloading is off "
            f"(offline); copy {RANKS_FILE} ({RANKS_URL}) into {data_dir()} (or set LMLAB_DATA), "
            "or use --tokenizer gpt2"
        )
    return _download()


class HarmonyTokenizer(Tokenizer):
    """o200k_harmony through `tiktoken.Encoding`; special-token text in input is always allowed.

    `bos_id` is `<|startoftext|>` (what `add_special` prepends); `eos_id` is `<|endoftext|>`, the
    document separator `lmlab.data.prepare` writes before each document."""

    def __init__(self, ranks_path: str | Path) -> None:
        import tiktoken

        self.ranks_path = Path(ranks_path)
        ranks = read_tiktoken_ranks(self.ranks_path)
        top = max(ranks.values(), default=-1)
        if top >= STARTOFTEXT:
            raise TokenizerError(
                f"{self.ranks_path} has rank {top}, but o200k_harmony's special tokens start at "
                f"{STARTOFTEXT}; pass OpenAI's {RANKS_FILE} ({RANKS_URL})"
            )
        self.n_ranks = top + 1
        self.special_tokens = harmony_special_tokens()
        self._special_ids = set(self.special_tokens.values())
        self.enc = tiktoken.Encoding(
            name=KIND,
            pat_str=O200K_PATTERN,
            mergeable_ranks=ranks,
            special_tokens=self.special_tokens,
        )
        self.bos_id, self.eos_id, self.pad_id = STARTOFTEXT, ENDOFTEXT, None
        self.chat_template = None

    def encode(self, text: str, *, add_special: bool = False) -> list[int]:
        """tiktoken ids; `add_special` prepends `<|startoftext|>`."""
        ids = self.enc.encode(text, allowed_special="all")
        return [STARTOFTEXT, *ids] if add_special else ids

    def encode_batch(self, texts: list[str], *, add_special: bool = False) -> list[list[int]]:
        """tiktoken's threaded batch encode."""
        out = self.enc.encode_batch(texts, allowed_special="all")
        return [[STARTOFTEXT, *ids] for ids in out] if add_special else out

    def _check(self, i: int) -> int:
        if not (0 <= i < self.n_ranks or i in self._special_ids):
            raise unknown_id(i, self.vocab_size)
        return i

    def decode(self, ids: Iterable[int], *, skip_special: bool = False) -> str:
        """Text of `ids`; `skip_special` drops every special token."""
        ids = [self._check(int(i)) for i in ids]
        if skip_special:
            ids = [i for i in ids if i not in self._special_ids]
        return self.enc.decode(ids, errors="replace")

    def id_to_bytes(self, i: int) -> bytes:
        """Bytes of token `i` (special tokens: their text)."""
        return self.enc.decode_single_token_bytes(self._check(int(i)))

    @property
    def vocab_size(self) -> int:
        """201088: the embedding rows gpt-oss has."""
        return self.enc.n_vocab

    def save(self, folder: str | Path) -> Path:
        """Copy the rank file next to a manifest of kind `o200k_harmony`."""
        folder = write_manifest(folder, KIND, file=RANKS_FILE)
        if self.ranks_path.resolve() != (folder / RANKS_FILE).resolve():
            shutil.copyfile(self.ranks_path, folder / RANKS_FILE)
        return folder


def o200k_harmony(
    path: str | Path | None = None, *, download: bool | None = None
) -> HarmonyTokenizer:
    """gpt-oss's tokenizer from a local or downloaded `o200k_base.tiktoken` (see the module doc)."""
    return HarmonyTokenizer(o200k_ranks_path(path, download=download))
