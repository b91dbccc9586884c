"""A conversation with a model: render its own chat template, stream the answer, keep history.

The history is trimmed to the model's context: when the conversation and the answer's token
budget no longer fit, the oldest user/assistant turns are dropped (a system message stays).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from lmlab.errors import InputError
from lmlab.generate.generate import check_settings, stream_generate
from lmlab.generate.sampling import SamplingConfig
from lmlab.tokenizers.base import TokenizerError

CHAT_SETTINGS = ("system", "on_trim", "sampling", "max_new_tokens", "seed", "compile", "stop_ids")


class Chat:
    """Messages so far; `reply(text)` streams the assistant's answer and remembers both turns.

    `on_trim(notice)` is called with a one-line notice whenever old turns are dropped to fit the
    model's context (default: nothing is said; `dropped` counts them either way).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        system: str | None = None,
        on_trim: Callable[[str], None] | None = None,
        sampling: SamplingConfig | None = None,
        max_new_tokens: int = 256,
        seed: int | None = None,
        compile: bool = False,
        stop_ids: Sequence[int | str] | None = None,
        **overrides: Any,
    ) -> None:
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise TokenizerError(
                "this model has no chat template, so lmlab cannot format a conversation — use "
                "`lmlab generate` for plain completion, or load an instruct model (a GGUF or HF "
                "folder with a chat template)"
            )
        self.sampling = (sampling or SamplingConfig()).updated(overrides, "Chat", CHAT_SETTINGS)
        check_settings(max_new_tokens, self.sampling)
        self.model, self.tokenizer, self.max_new_tokens = model, tokenizer, max_new_tokens
        self.seed, self.compile, self.stop_ids = seed, compile, stop_ids
        self.on_trim, self.dropped = on_trim, 0
        self.messages: list[dict[str, str]] = []
        if system:
            self.messages.append({"role": "system", "content": system})

    def prompt_ids(self, max_new_tokens: int = 1) -> list[int]:
        """Token ids of the conversation so far, ending with the assistant's turn opener; the
        oldest turns are dropped until it fits the context with room for `max_new_tokens`."""
        ctx, dropped = self.model.cfg.max_seq_len, 0
        while True:
            ids = self.tokenizer.apply_chat_template(
                self.messages, add_generation_prompt=True, return_dict=False
            )
            if len(ids) + max_new_tokens - 1 <= ctx or not self._drop_oldest_turn():
                break
            dropped += 1
        if dropped:
            self.dropped += dropped
            if self.on_trim is not None:
                self.on_trim(
                    f"note: dropped the {dropped} oldest turn(s) of this chat to fit the model's "
                    f"context of {ctx} tokens"
                )
        return ids

    def _drop_oldest_turn(self) -> bool:
        """Remove the oldest user message and the answer to it; never the last user message."""
        turns = [i for i, m in enumerate(self.messages) if m["role"] == "user"]
        if len(turns) < 2:
            return False
        del self.messages[turns[0] : turns[1]]
        return True

    def reply(self, user: str) -> Iterator[str]:
        """Stream the answer to `user`; the (possibly interrupted) answer joins the history.

        A message that does not fit the context even alone raises `InputError` and is forgotten.
        """
        if not user.strip():
            raise InputError("empty message — type something to send")
        self.messages.append({"role": "user", "content": user})
        budget = self.max_new_tokens
        ids = self.prompt_ids(budget)
        room = self.model.cfg.max_seq_len - len(ids) + 1  # the last new token is never fed back
        if room < 1:
            self.messages.pop()
            raise InputError(
                f"message too long: with the chat template it takes {len(ids)} tokens, more than "
                f"the model's context of {self.model.cfg.max_seq_len} — send a shorter message"
            )
        answer: list[str] = []
        pieces = stream_generate(
            self.model, ids, self.tokenizer, sampling=self.sampling,
            max_new_tokens=min(budget, room), stop_ids=self.stop_ids, seed=self.seed,
            compile=self.compile,
        )  # fmt: skip
        try:
            for piece in pieces:
                answer.append(piece)
                yield piece
        finally:  # also on Ctrl-C or an abandoned generator: keep what was said
            self.messages.append({"role": "assistant", "content": "".join(answer).strip()})

    def reset(self) -> None:
        """Forget the conversation (a system message stays)."""
        self.messages = [m for m in self.messages if m["role"] == "system"]
