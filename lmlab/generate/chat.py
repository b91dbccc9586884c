"""A conversation with a model: render its own chat template, stream the answer, keep history."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from lmlab.generate.generate import stream_generate


class Chat:
    """Messages so far; `reply(text)` streams the assistant's answer and remembers both turns."""

    def __init__(
        self, model: Any, tokenizer: Any, *, system: str | None = None, **sampling: Any
    ) -> None:
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "this model has no chat template, so lmlab cannot format a conversation; use "
                "`lmlab generate` for plain completion, or load an instruct model (a GGUF or HF "
                "folder with a chat template)"
            )
        self.model, self.tokenizer, self.sampling = model, tokenizer, sampling
        self.messages: list[dict[str, str]] = []
        if system:
            self.messages.append({"role": "system", "content": system})

    def prompt_ids(self) -> list[int]:
        """Token ids of the conversation so far, ending with the assistant's turn opener."""
        text = self.tokenizer.apply_chat_template(self.messages, add_generation_prompt=True)
        return self.tokenizer.encode(text)

    def reply(self, user: str) -> Iterator[str]:
        """Stream the answer to `user`; the (possibly interrupted) answer joins the history."""
        if not user.strip():
            raise ValueError("empty message: type something to send")
        self.messages.append({"role": "user", "content": user})
        answer: list[str] = []
        try:
            for piece in stream_generate(
                self.model, self.prompt_ids(), self.tokenizer, **self.sampling
            ):
                answer.append(piece)
                yield piece
        finally:  # also on Ctrl-C or an abandoned generator: keep what was said
            self.messages.append({"role": "assistant", "content": "".join(answer).strip()})

    def reset(self) -> None:
        """Forget the conversation (a system message stays)."""
        self.messages = [m for m in self.messages if m["role"] == "system"]
