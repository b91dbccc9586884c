"""The one interface every lmlab tokenizer implements, and chat-template rendering shared by all."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lmlab.tokenizers.chat_template import check_keywords, render_conversation, to_output
from lmlab.tokenizers.errors import TokenizerError

MANIFEST = (
    "lmlab_tokenizer.json"  # written by `save`, names the kind so `load_tokenizer` can read it
)


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
        self,
        conversation: list[dict[str, Any]] | list[list[dict[str, Any]]],
        *,
        tools: list[dict[str, Any]] | None = None,
        documents: list[dict[str, Any]] | None = None,
        chat_template: str | None = None,
        add_generation_prompt: bool = False,
        continue_final_message: bool = False,
        tokenize: bool = True,
        return_tensors: str | None = None,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> Any:
        """Render `conversation` with the chat template, as transformers (v5) does.

        Defaults match transformers: token ids (`tokenize=True`) in a dict with `input_ids` and
        `attention_mask` (`return_dict=True`), no assistant opener (`add_generation_prompt=False`).
        `tokenize=False` gives the text; `return_tensors="pt"` a [1, T] tensor ([B, T] for a list of
        conversations). Other keywords are template variables and must be read by the template.
        """
        template = chat_template or self.chat_template
        if not template:
            raise TokenizerError(
                f"{type(self).__name__} has no chat template; set `tokenizer.chat_template` to a "
                "Jinja template string (e.g. copied from the model's tokenizer_config.json)"
            )
        if continue_final_message and add_generation_prompt:
            raise TokenizerError(
                "continue_final_message and add_generation_prompt exclude each other: continue the "
                "last message, or open a new assistant turn"
            )
        check_keywords(template, kwargs)
        batched = bool(conversation) and isinstance(conversation[0], list | tuple)
        chats = [list(c) for c in conversation] if batched else [conversation]
        variables = {
            "bos_token": self.token_name(self.bos_id) or "",
            "eos_token": self.token_name(self.eos_id) or "",
            "pad_token": self.token_name(self.pad_id) or "",
            "tools": tools,
            "documents": documents,
            **kwargs,
        }
        texts = [
            render_conversation(
                template,
                chat,  # type: ignore[arg-type]
                add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message,
                **variables,
            )
            for chat in chats
        ]
        if not tokenize:
            return texts if batched else texts[0]
        ids = [self.encode(t, add_special=False) for t in texts]
        return to_output(
            ids, batched=batched, return_tensors=return_tensors, return_dict=return_dict
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


def write_manifest(folder: str | Path, kind: str, **fields: Any) -> Path:
    """Create `folder` and write the manifest naming the tokenizer kind; returns the folder."""
    from lmlab.runs import atomic_write

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(
        folder / MANIFEST, json.dumps({"kind": kind, **fields}, indent=1, ensure_ascii=False)
    )
    return folder
