"""A `tokenizers.Tokenizer` (tokenizer.json) behind the lmlab interface, with HF's tokenizer_config.json."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

from lmlab.tokenizers.base import (
    Tokenizer,
    TokenizerError,
    unknown_id,
    well_formed,
    write_manifest,
)

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@lru_cache(maxsize=1)
def byte_level_chars() -> dict[str, int]:
    """GPT-2's byte-level alphabet: printable bytes stand for themselves, the rest map to U+0100 on."""
    keep = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


def _token_name(value: Any) -> str | None:
    """tokenizer_config.json stores a special token as a string or as {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


class HFTokenizer(Tokenizer):
    """Wraps `tokenizers.Tokenizer`; `add_special` runs its post-processor (BOS, [CLS]/[SEP], ...)."""

    def __init__(
        self,
        tok: Any,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
        chat_template: str | None = None,
    ) -> None:
        from tokenizers import decoders

        self.tok = tok
        tok.no_padding()  # batching pads; encode returns every token of the text
        tok.no_truncation()
        self.special_tokens = {
            t.content: i for i, t in tok.get_added_tokens_decoder().items() if t.special
        }
        self.bos_id = self._id(bos_token)
        self.eos_id = self._id(eos_token)
        self.pad_id = self._id(pad_token)
        self.chat_template = chat_template
        dec = tok.decoder
        self._byte_level = isinstance(dec, decoders.ByteLevel) or (
            dec is not None and '"ByteLevel"' in str(dec.__getstate__())
        )

    def _id(self, token: str | None) -> int | None:
        if token is None:
            return None
        i = self.tok.token_to_id(token)
        if i is None:
            raise TokenizerError(
                f"special token {token!r} is not in the vocabulary; fix tokenizer_config.json"
            )
        return i

    @classmethod
    def from_folder(cls, folder: str | Path) -> HFTokenizer:
        """Read `tokenizer.json`, plus special tokens and chat template from `tokenizer_config.json`."""
        from tokenizers import Tokenizer as RawTokenizer

        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise TokenizerError(f"{path} not found; an HF tokenizer folder needs tokenizer.json")
        try:
            tok = RawTokenizer.from_file(str(path))
        except Exception as e:
            raise TokenizerError(
                f"{path} could not be parsed by `tokenizers` ({e}); the file is corrupt"
            ) from None
        cfg: dict[str, Any] = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the config wins
            p = folder / name
            if p.is_file():
                try:
                    cfg.update(json.loads(p.read_text(encoding="utf-8")))
                except json.JSONDecodeError as e:
                    raise TokenizerError(f"{p} is not valid JSON ({e})") from None
        template = cfg.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template}
            template = named.get("default") or next(iter(named.values()), None)
        if template is None and (folder / "chat_template.jinja").is_file():
            template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
        specials = {t.content for t in tok.get_added_tokens_decoder().values()}

        def pick(*keys: str) -> str | None:
            for k in keys:
                name = _token_name(cfg.get(k))
                if name is not None and (name in specials or tok.token_to_id(name) is not None):
                    return name
            return None

        return cls(
            tok,
            bos_token=pick("bos_token", "cls_token"),
            eos_token=pick("eos_token", "sep_token"),
            pad_token=pick("pad_token"),
            chat_template=template,
        )

    def encode(self, text: str, *, add_special: bool = False) -> list[int]:
        """Ids from `tokenizers`; added-token text (e.g. `<|im_start|>`) maps to its id."""
        try:
            return self.tok.encode(text, add_special_tokens=add_special).ids
        except (TypeError, UnicodeEncodeError):  # lone surrogates: encode them as U+FFFD
            if not isinstance(text, str):
                raise
            return self.tok.encode(well_formed(text), add_special_tokens=add_special).ids

    def encode_batch(self, texts: list[str], *, add_special: bool = False) -> list[list[int]]:
        """`tokenizers`' parallel batch encode."""
        try:
            out = self.tok.encode_batch(texts, add_special_tokens=add_special)
        except (TypeError, UnicodeEncodeError):
            if not all(isinstance(t, str) for t in texts):
                raise
            out = self.tok.encode_batch(
                [well_formed(t) for t in texts], add_special_tokens=add_special
            )
        return [e.ids for e in out]

    def decode(self, ids: Iterable[int], *, skip_special: bool = False) -> str:
        """Text of `ids` through the tokenizer's decoder (invalid UTF-8 becomes U+FFFD)."""
        ids = [int(i) for i in ids]
        bad = next((i for i in ids if i < 0), None)
        if bad is not None:
            raise unknown_id(bad, self.vocab_size)
        return self.tok.decode(ids, skip_special_tokens=skip_special)

    def id_to_bytes(self, i: int) -> bytes:
        """Raw bytes of token `i` (byte-level alphabet and `<0xNN>` byte tokens undone, `▁` -> space)."""
        t = self.tok.id_to_token(int(i)) if int(i) >= 0 else None
        if t is None:
            raise unknown_id(i, self.vocab_size)
        if int(i) in self.special_tokens.values():
            return t.encode("utf-8")
        if self._byte_level:
            table = byte_level_chars()
            if all(c in table for c in t):
                return bytes(table[c] for c in t)
        m = _BYTE_TOKEN.fullmatch(t)
        if m:
            return bytes([int(m.group(1), 16)])
        return t.replace("▁", " ").encode("utf-8")

    @property
    def vocab_size(self) -> int:
        """Model vocabulary plus added tokens."""
        return self.tok.get_vocab_size(with_added_tokens=True)

    def save(self, folder: str | Path) -> Path:
        """Write `tokenizer.json` and `tokenizer_config.json` (special tokens, chat template)."""
        from lmlab.runs import atomic_write

        folder = write_manifest(folder, "hf", file="tokenizer.json")
        atomic_write(folder / "tokenizer.json", self.tok.to_str())
        cfg = {
            "bos_token": self.token_name(self.bos_id),
            "eos_token": self.token_name(self.eos_id),
            "pad_token": self.token_name(self.pad_id),
            "chat_template": self.chat_template,
        }
        atomic_write(
            folder / "tokenizer_config.json", json.dumps(cfg, indent=1, ensure_ascii=False)
        )
        return folder
