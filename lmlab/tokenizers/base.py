"""The one interface every lmlab tokenizer implements, and chat-template rendering shared by all."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from lmlab.errors import LmlabError

MANIFEST = (
    "lmlab_tokenizer.json"  # written by `save`, names the kind so `load_tokenizer` can read it
)


class TokenizerError(LmlabError, ValueError):
    """A tokenizer file, name or vocabulary lmlab cannot use; the message says what and the fix."""


class Tokenizer(ABC):
    """Text <-> token ids, special ids and an optional chat template."""

    special_tokens: dict[str, int]
    chat_template: str | None = None
    bos_id: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None

    @abstractmethod
    def encode(self, text: str, *, add_special: bool = False) -> list[int]:
        """Token ids of `text`; special-token strings in it map to their ids; `add_special` adds BOS etc."""

    @abstractmethod
    def decode(self, ids: Iterable[int], *, skip_special: bool = False) -> str:
        """Text of `ids` (invalid UTF-8 replaced by U+FFFD); `skip_special` drops special tokens."""

    @abstractmethod
    def id_to_bytes(self, i: int) -> bytes:
        """The raw bytes token `i` stands for (special tokens: their UTF-8 text)."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of token ids (the embedding rows a model needs), specials included."""

    @abstractmethod
    def save(self, folder: str | Path) -> Path:
        """Write files into `folder` that `load_tokenizer(folder)` reads back; returns the folder."""

    def encode_batch(self, texts: list[str], *, add_special: bool = False) -> list[list[int]]:
        """`encode` for each text."""
        return [self.encode(t, add_special=add_special) for t in texts]

    def decode_batch(self, batch: list[list[int]], *, skip_special: bool = False) -> list[str]:
        """`decode` for each id list."""
        return [self.decode(ids, skip_special=skip_special) for ids in batch]

    def id_to_token(self, i: int) -> str:
        """Printable form of token `i` for plots and tables (spaces shown as `·`, bytes as `<0x..>`)."""
        b = self.id_to_bytes(i)
        try:
            s = b.decode("utf-8")
        except UnicodeDecodeError:
            return "".join(f"<0x{c:02X}>" for c in b)
        return s.replace(" ", "·").replace("\n", "\\n").replace("\t", "\\t")

    def token_to_str(self, i: int) -> str:
        """Alias of `id_to_token`."""
        return self.id_to_token(i)

    def tokens(self, text: str) -> list[str]:
        """`text` split into printable token strings (for visualizations)."""
        return [self.id_to_token(i) for i in self.encode(text)]

    def token_name(self, i: int | None) -> str | None:
        """Text of special token `i` (e.g. BOS), or None."""
        if i is None:
            return None
        names = {v: k for k, v in self.special_tokens.items()}
        return names.get(i) or self.id_to_bytes(i).decode("utf-8", "replace")

    def apply_chat_template(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **extra: Any
    ) -> str:
        """Render `messages` ([{"role", "content"}]) with this tokenizer's Jinja chat template."""
        if not self.chat_template:
            raise TokenizerError(
                f"{type(self).__name__} has no chat template; set `tokenizer.chat_template` to a "
                "Jinja template string (e.g. copied from the model's tokenizer_config.json)"
            )
        return render_chat_template(
            self.chat_template,
            messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.token_name(self.bos_id) or "",
            eos_token=self.token_name(self.eos_id) or "",
            pad_token=self.token_name(self.pad_id) or "",
            **extra,
        )

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, bos={self.bos_id}, eos={self.eos_id})"


def well_formed(text: str) -> str:
    """`text` with lone surrogates (e.g. from `errors="surrogateescape"` reads) replaced by U+FFFD;
    surrogate pairs are joined, so the result always encodes as UTF-8."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def unknown_id(i: object, vocab_size: int) -> TokenizerError:
    """The error for a token id outside the vocabulary, naming the id and the valid range."""
    return TokenizerError(
        f"token id {i} is outside this vocabulary of {vocab_size} ids (0..{vocab_size - 1}) — "
        "use the tokenizer the ids came from"
    )


def _raise(message: str) -> None:
    raise TokenizerError(f"chat template error: {message}")


def _tojson(x: Any, indent: int | None = None, **_: Any) -> str:
    return json.dumps(x, ensure_ascii=False, indent=indent)


@lru_cache(maxsize=16)
def _compile(template: str) -> Any:
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    # Same environment settings as Hugging Face chat templates expect (trim/lstrip blocks).
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def render_chat_template(
    template: str,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool = True,
    **variables: Any,
) -> str:
    """Render a Jinja chat template in a sandbox, with `raise_exception` and loop controls."""
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise TokenizerError(
            f"messages must be a list of dicts like {{'role': 'user', 'content': 'hi'}}, got {messages!r:.80}"
        )
    return _compile(template).render(
        messages=messages, add_generation_prompt=add_generation_prompt, **variables
    )


def write_manifest(folder: str | Path, kind: str, **fields: Any) -> Path:
    """Create `folder` and write the manifest naming the tokenizer kind; returns the folder."""
    from lmlab.runs import atomic_write

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(
        folder / MANIFEST, json.dumps({"kind": kind, **fields}, indent=1, ensure_ascii=False)
    )
    return folder
