"""Character-level tokenizer: one id per distinct character of a training text (nanoGPT's shakespeare_char)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from lmlab.tokenizers.base import Tokenizer, TokenizerError, unknown_id, write_manifest

FILE = "chars.json"


class CharTokenizer(Tokenizer):
    """Ids are positions in a sorted character list; unknown characters are an error (or `unk`)."""

    def __init__(
        self, chars: Iterable[str], *, special_tokens: Iterable[str] = (), unk: str | None = None
    ) -> None:
        self.chars = list(chars)
        if len(set(self.chars)) != len(self.chars) or any(len(c) != 1 for c in self.chars):
            raise TokenizerError("chars must be distinct single characters")
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.special_tokens = {s: len(self.chars) + k for k, s in enumerate(special_tokens)}
        self.itos = [*self.chars, *self.special_tokens]
        if unk is not None and unk not in self.stoi and unk not in self.special_tokens:
            raise TokenizerError(
                f"unk={unk!r} is neither a character nor a special token of this tokenizer"
            )
        self.unk = unk
        self.bos_id = self.eos_id = self.special_tokens.get("<|endoftext|>")
        self.pad_id = None
        self.chat_template = None

    @classmethod
    def from_text(
        cls, text: str, *, special_tokens: Iterable[str] = (), unk: str | None = None
    ) -> CharTokenizer:
        """Vocabulary = the sorted distinct characters of `text`."""
        return cls(sorted(set(text)), special_tokens=special_tokens, unk=unk)

    def encode(self, text: str, *, add_special: bool = False) -> list[int]:
        """One id per character (special-token strings are matched first)."""
        out = [self.bos_id] if add_special and self.bos_id is not None else []
        specials = sorted(self.special_tokens, key=len, reverse=True)
        i, n = 0, len(text)
        while i < n:
            for s in specials:
                if text.startswith(s, i):
                    out.append(self.special_tokens[s])
                    i += len(s)
                    break
            else:
                c = text[i]
                j = self.stoi.get(c)
                if j is None:
                    if self.unk is None:
                        raise TokenizerError(
                            f"character {c!r} (U+{ord(c):04X}) at position {i} is not in this {len(self.chars)}-"
                            "character vocabulary; build it from text that contains it or pass unk=..."
                        )
                    j = self.stoi.get(self.unk, self.special_tokens.get(self.unk))
                out.append(j)
                i += 1
        return out

    def decode(self, ids: Iterable[int], *, skip_special: bool = False) -> str:
        """Join the characters of `ids`."""
        n = len(self.chars)
        return "".join(self._char(i) for i in ids if not (skip_special and n <= int(i)))

    def _char(self, i: int) -> str:
        if not 0 <= int(i) < len(self.itos):
            raise unknown_id(i, self.vocab_size)
        return self.itos[int(i)]

    def id_to_bytes(self, i: int) -> bytes:
        """UTF-8 of character `i`."""
        return self._char(i).encode("utf-8", "surrogatepass")

    @property
    def vocab_size(self) -> int:
        """Characters + special tokens."""
        return len(self.itos)

    def save(self, folder: str | Path) -> Path:
        """Write `chars.json` and the manifest."""
        from lmlab.runs import atomic_write

        folder = write_manifest(folder, "char", file=FILE)
        data = {"chars": self.chars, "special_tokens": list(self.special_tokens), "unk": self.unk}
        atomic_write(folder / FILE, json.dumps(data, ensure_ascii=False))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> CharTokenizer:
        """Read a tokenizer written by `save`."""
        path = Path(folder) / FILE
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            return cls(d["chars"], special_tokens=d.get("special_tokens", ()), unk=d.get("unk"))
        except FileNotFoundError:
            raise TokenizerError(
                f"{path} not found; a char tokenizer folder is written by CharTokenizer.save"
            ) from None
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise TokenizerError(
                f"{path} is not a valid char tokenizer file ({e}); save it again"
            ) from None
