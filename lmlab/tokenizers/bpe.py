"""Byte-level BPE from scratch: train, encode, decode, save/load, and GPT-2's ranks from tiktoken.

How it works, in three steps:

1. Pre-tokenize: a regex cuts text into chunks (words with their leading space, numbers,
   punctuation runs, whitespace). Merges never cross a chunk boundary.
2. Each chunk starts as its UTF-8 bytes, one id per byte, so any text is encodable.
3. Training repeatedly finds the most frequent adjacent pair of ids and gives it a new id
   (a *merge*). Encoding replays merges: in each chunk it merges the adjacent pair whose merge
   came earliest (lowest new id), until no pair has a merge.

Training is fast because identical chunks are counted once (a word-frequency table) and
after each merge only the words containing the merged pair update their pair counts.
"""

from __future__ import annotations

import base64
import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from itertools import pairwise
from pathlib import Path

import regex
from tqdm.auto import tqdm

from lmlab.paths import data_dir
from lmlab.tokenizers.base import (
    Tokenizer,
    TokenizerError,
    unknown_id,
    well_formed,
    write_manifest,
)

# GPT-2's pre-tokenizer: contractions, letters, numbers, other symbols (each with an optional
# leading space), and whitespace (a run keeps its last space for the next word).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# GPT-4's (cl100k): case-insensitive contractions, numbers in groups of at most 3 digits.
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)
ENDOFTEXT = "<|endoftext|>"
GPT2_EOT = 50256  # GPT-2's id of ENDOFTEXT
GPT2_RANKS_FILE = "gpt2.tiktoken"
FILE = "bpe.json"

Pair = tuple[int, int]


def merge_pair(ids: list[int], pair: Pair, new_id: int) -> list[int]:
    """Replace every occurrence of `pair` in `ids` (left to right, non-overlapping) with `new_id`."""
    out, i, n = [], 0, len(ids)
    while i < n:
        if i < n - 1 and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


class BPETokenizer(Tokenizer):
    """Byte-level BPE: `merges` maps an id pair to its new id; lower new ids merge first."""

    def __init__(
        self,
        merges: dict[Pair, int],
        *,
        byte_ids: list[int] | None = None,
        pattern: str = GPT2_PATTERN,
        special_tokens: dict[str, int] | None = None,
        bos_id: int | None = None,
        eos_id: int | None = None,
        pad_id: int | None = None,
        chat_template: str | None = None,
    ) -> None:
        self.merges = dict(merges)
        self.byte_ids = list(range(256)) if byte_ids is None else list(byte_ids)
        if len(self.byte_ids) != 256:
            raise TokenizerError(
                f"byte_ids must list 256 ids (one per byte value), got {len(self.byte_ids)}"
            )
        self.pattern = pattern
        self._pat = regex.compile(pattern)
        self.special_tokens = dict(special_tokens or {})
        default = self.special_tokens.get(ENDOFTEXT)
        self.bos_id = default if bos_id is None else bos_id
        self.eos_id = default if eos_id is None else eos_id
        self.pad_id = pad_id
        self.chat_template = chat_template
        # id -> bytes: single bytes first, then each merge in order (its parts exist already).
        self.vocab: dict[int, bytes] = {i: bytes([b]) for b, i in enumerate(self.byte_ids)}
        for (a, b), new in sorted(self.merges.items(), key=lambda kv: kv[1]):
            self.vocab[new] = self.vocab[a] + self.vocab[b]
        for s, i in self.special_tokens.items():
            self.vocab[i] = s.encode("utf-8")
        self._special_ids = set(self.special_tokens.values())
        self._special_re = (
            regex.compile(
                "("
                + "|".join(
                    regex.escape(s) for s in sorted(self.special_tokens, key=len, reverse=True)
                )
                + ")"
            )
            if self.special_tokens
            else None
        )
        self._cache: dict[str, list[int]] = {}

    # ------------------------------------------------------------------ training
    @classmethod
    def train(
        cls,
        text: str,
        vocab_size: int,
        *,
        pattern: str = GPT2_PATTERN,
        special_tokens: Iterable[str] = (ENDOFTEXT,),
        progress: bool = True,
    ) -> BPETokenizer:
        """Learn merges on `text` until there are `vocab_size` ids (256 bytes + merges + specials)."""
        specials = list(special_tokens)
        n_merges = vocab_size - 256 - len(specials)
        if n_merges < 0:
            raise TokenizerError(
                f"vocab_size={vocab_size} is below 256 byte tokens + {len(specials)} special tokens; "
                f"use vocab_size >= {256 + len(specials)}"
            )
        pat = regex.compile(pattern)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = well_formed(text)
        # Word-frequency table: each distinct chunk is stored once, with its count.
        counts = Counter(pat.findall(text))
        words = [list(chunk.encode("utf-8")) for chunk in counts]
        freqs = list(counts.values())

        pair_counts: Counter[Pair] = Counter()
        where: defaultdict[Pair, set[int]] = defaultdict(set)  # pair -> words that (may) contain it
        for w, (ids, f) in enumerate(zip(words, freqs, strict=True)):
            for pair in pairwise(ids):
                pair_counts[pair] += f
                where[pair].add(w)

        merges: dict[Pair, int] = {}
        for new_id in tqdm(range(256, 256 + n_merges), desc="BPE merges", disable=not progress):
            if not pair_counts:
                break  # every chunk is a single token already
            best = max(pair_counts.items(), key=lambda kv: kv[1])[0]
            merges[best] = new_id
            for w in where.pop(best):
                ids, f = words[w], freqs[w]
                # Incremental update: take this word's pairs out, merge, put the new pairs in.
                for pair in pairwise(ids):
                    pair_counts[pair] -= f
                    if pair_counts[pair] == 0:
                        del pair_counts[pair]
                ids = words[w] = merge_pair(ids, best, new_id)
                for pair in pairwise(ids):
                    pair_counts[pair] += f
                    where[pair].add(w)
        first_special = 256 + len(merges)
        return cls(
            merges,
            pattern=pattern,
            special_tokens={s: first_special + k for k, s in enumerate(specials)},
        )

    # ------------------------------------------------------------------ encode / decode
    def _encode_chunk(self, chunk: str) -> list[int]:
        """BPE on one pre-token: merge the earliest-learned adjacent pair until none is left."""
        ids = [self.byte_ids[b] for b in chunk.encode("utf-8")]
        merges = self.merges
        while len(ids) >= 2:
            pair = min(pairwise(ids), key=lambda p: merges.get(p, 1 << 62))
            if pair not in merges:
                break
            ids = merge_pair(ids, pair, merges[pair])
        return ids

    def _encode_ordinary(self, text: str) -> list[int]:
        out: list[int] = []
        cache = self._cache
        for chunk in self._pat.findall(text):
            ids = cache.get(chunk)
            if ids is None:
                ids = self._encode_chunk(chunk)
                if len(cache) > 200_000:
                    cache.clear()
                cache[chunk] = ids
            out.extend(ids)
        return out

    def encode(self, text: str, *, add_special: bool = False) -> list[int]:
        """Token ids of `text`; special-token strings become their ids; `add_special` prepends BOS."""
        out = [self.bos_id] if add_special and self.bos_id is not None else []
        try:
            return out + self._encode_parts(text)
        except UnicodeEncodeError:  # lone surrogates have no UTF-8 bytes: encode them as U+FFFD
            return out + self._encode_parts(well_formed(text))

    def _encode_parts(self, text: str) -> list[int]:
        out: list[int] = []
        parts = self._special_re.split(text) if self._special_re else [text]
        for k, part in enumerate(parts):
            if k % 2:  # odd parts are the captured special tokens
                out.append(self.special_tokens[part])
            elif part:
                out.extend(self._encode_ordinary(part))
        return out

    def decode(self, ids: Iterable[int], *, skip_special: bool = False) -> str:
        """Concatenate the bytes of `ids` and decode UTF-8 (invalid sequences -> U+FFFD)."""
        try:
            data = b"".join(
                self.vocab[int(i)]
                for i in ids
                if not (skip_special and int(i) in self._special_ids)
            )
        except KeyError as e:
            raise unknown_id(e.args[0], self.vocab_size) from None
        return data.decode("utf-8", errors="replace")

    def id_to_bytes(self, i: int) -> bytes:
        """Bytes of token `i`."""
        try:
            return self.vocab[int(i)]
        except KeyError:
            raise unknown_id(i, self.vocab_size) from None

    @property
    def vocab_size(self) -> int:
        """Largest id + 1."""
        return max(self.vocab) + 1

    # ------------------------------------------------------------------ files
    def save(self, folder: str | Path) -> Path:
        """Write `bpe.json` (merges in order, pattern, specials) and the manifest."""
        ordered = sorted(self.merges.items(), key=lambda kv: kv[1])
        data = {
            "pattern": self.pattern,
            "byte_ids": None if self.byte_ids == list(range(256)) else self.byte_ids,
            "merges": [[a, b, new] for (a, b), new in ordered],
            "special_tokens": self.special_tokens,
            "bos_id": self.bos_id,
            "eos_id": self.eos_id,
            "pad_id": self.pad_id,
            "chat_template": self.chat_template,
        }
        folder = write_manifest(folder, "bpe", file=FILE)
        from lmlab.runs import atomic_write

        atomic_write(folder / FILE, json.dumps(data, ensure_ascii=False))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> BPETokenizer:
        """Read a tokenizer written by `save`."""
        path = Path(folder) / FILE
        if not path.is_file():
            raise TokenizerError(
                f"{path} not found; a BPE tokenizer folder is written by BPETokenizer.save(folder)"
            )
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            merges = {(a, b): new for a, b, new in d["merges"]}
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise TokenizerError(
                f"{path} is not a valid BPE file ({e}); save the tokenizer again"
            ) from None
        return cls(
            merges,
            byte_ids=d.get("byte_ids"),
            pattern=d.get("pattern", GPT2_PATTERN),
            special_tokens=d.get("special_tokens"),
            bos_id=d.get("bos_id"),
            eos_id=d.get("eos_id"),
            pad_id=d.get("pad_id"),
            chat_template=d.get("chat_template"),
        )

    # ------------------------------------------------------------------ GPT-2 from tiktoken ranks
    @classmethod
    def from_tiktoken(cls, ranks_path: str | Path | None = None) -> BPETokenizer:
        """GPT-2's tokenizer rebuilt as merges from a `.tiktoken` rank file; ids equal tiktoken's."""
        ranks = read_tiktoken_ranks(ranks_path or default_ranks_path())
        return cls(
            merges_from_ranks(ranks),
            byte_ids=[ranks[bytes([b])] for b in range(256)],
            pattern=GPT2_PATTERN,
            special_tokens={ENDOFTEXT: GPT2_EOT},
        )


def default_ranks_path() -> Path:
    """`data_dir()/gpt2.tiktoken`: where GPT-2's rank file is looked for offline."""
    return data_dir() / GPT2_RANKS_FILE


def read_tiktoken_ranks(path: str | Path) -> dict[bytes, int]:
    """Parse a `.tiktoken` file: one `base64(token_bytes) rank` per line."""
    path = Path(path)
    if not path.is_file():
        raise TokenizerError(
            f"tiktoken rank file {path} not found; put gpt2.tiktoken in $LMLAB_DATA (lmlab.paths.data_dir()) "
            "or download https://openaipublic.blob.core.windows.net/encodings/gpt2.tiktoken"
        )
    ranks: dict[bytes, int] = {}
    for n, line in enumerate(path.read_text(encoding="ascii").splitlines(), 1):
        if not line:
            continue
        try:
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
        except ValueError:
            raise TokenizerError(
                f"{path}:{n} is not `base64 rank` ({line[:60]!r}); the file is not a tiktoken rank file"
            ) from None
    return ranks


def merges_from_ranks(ranks: dict[bytes, int]) -> dict[Pair, int]:
    """Recover the merge that made each multi-byte token: replay BPE on its bytes with lower ranks.

    tiktoken stores only `token bytes -> rank`. A token of rank r was made by merging two tokens
    of lower rank; running BPE on its bytes with ranks < r stops at exactly those two parts.
    """
    merges: dict[Pair, int] = {}
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            best_i, best_rank = -1, rank
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < best_rank:
                    best_i, best_rank = i, r
            if best_i < 0:
                break
            parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
        if len(parts) != 2:
            raise TokenizerError(
                f"token {token!r} (rank {rank}) cannot be built from two lower-rank tokens"
            )
        merges[(ranks[parts[0]], ranks[parts[1]])] = rank
    return merges
