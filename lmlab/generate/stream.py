"""Incremental detokenization: emit text as tokens arrive, never half a UTF-8 character."""

from __future__ import annotations

import codecs
from typing import Any


class TextStream:
    """Feed token ids one by one; `push` returns the newly completed text (possibly "")."""

    def __init__(self, tokenizer: Any, skip_special: bool = True) -> None:
        self.tokenizer, self.skip_special = tokenizer, skip_special
        self.special = set(getattr(tokenizer, "special_tokens", {}).values())
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        if self.skip_special and token_id in self.special:
            return ""
        return self.decoder.decode(self.tokenizer.id_to_bytes(token_id))

    def flush(self) -> str:
        return self.decoder.decode(b"", final=True)
