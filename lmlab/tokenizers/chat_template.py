"""Chat templates with transformers' semantics: render a Jinja template, then tokenize it.

`apply_chat_template` follows `transformers.PreTrainedTokenizerBase.apply_chat_template` (v5):
`tokenize=True` and `return_dict=True` by default (a dict with `input_ids` and `attention_mask`),
`add_generation_prompt=False`, `return_tensors="pt"` gives [1, T] (or [B, T] for a batch),
`continue_final_message` leaves the last message open. Keywords that are neither a parameter nor a
variable the template reads raise an error instead of vanishing into the template.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any

from lmlab.tokenizers.errors import TokenizerError

PARAMETERS = (
    "tools",
    "documents",
    "chat_template",
    "add_generation_prompt",
    "continue_final_message",
    "tokenize",
    "return_tensors",
    "return_dict",
)
# transformers options lmlab does not implement, with the value that means "off"
UNSUPPORTED = {
    "padding": False,
    "truncation": False,
    "max_length": None,
    "return_assistant_tokens_mask": False,
    "sanitize_control_tokens": False,
    "tokenizer_kwargs": None,
}
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "


def _raise(message: str) -> None:
    raise TokenizerError(f"chat template error: {message}")


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


@lru_cache(maxsize=16)
def _environment() -> Any:
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    # Same environment settings as Hugging Face chat templates expect (trim/lstrip blocks).
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


@lru_cache(maxsize=16)
def _compile(template: str) -> Any:
    return _environment().from_string(template)


@lru_cache(maxsize=16)
def template_variables(template: str) -> frozenset[str]:
    """Names a template reads that it does not set itself (`messages`, `bos_token`, ...)."""
    from jinja2 import meta

    return frozenset(meta.find_undeclared_variables(_environment().parse(template)))


def render_chat_template(
    template: str,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool = False,
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


def check_keywords(template: str, kwargs: dict[str, Any]) -> None:
    """Refuse transformers options lmlab lacks and keywords the template never reads."""
    for k, off in UNSUPPORTED.items():
        if k in kwargs and kwargs.pop(k) != off:
            raise TokenizerError(
                f"apply_chat_template({k}=...) is a transformers option lmlab does not implement; "
                f"leave it out and post-process the returned ids (e.g. pad or cut them) yourself"
            )
    unknown = sorted(set(kwargs) - template_variables(template))
    if unknown:
        used = (
            sorted(template_variables(template) - {"messages", "add_generation_prompt"}) or "none"
        )
        raise TokenizerError(
            f"apply_chat_template got unknown keyword(s) {unknown}: not a parameter "
            f"({', '.join(PARAMETERS)}) and not a variable this chat template reads ({used}); "
            "check the spelling"
        )


def render_conversation(
    template: str,
    conversation: list[dict[str, Any]],
    *,
    add_generation_prompt: bool,
    continue_final_message: bool,
    **variables: Any,
) -> str:
    """One conversation rendered like transformers: None-valued keys dropped, an open last message."""
    if not isinstance(conversation, list) or not all(isinstance(m, dict) for m in conversation):
        raise TokenizerError(
            "a conversation must be a list of dicts like {'role': 'user', 'content': 'hi'}, "
            f"got {conversation!r:.80}"
        )
    if not conversation:
        raise TokenizerError(
            "cannot apply a chat template to an empty conversation; give a message"
        )
    chat = [{k: v for k, v in m.items() if v is not None} for m in conversation]
    final = None
    if continue_final_message:
        final = chat[-1].get("content")
        if not isinstance(final, str):
            raise TokenizerError(
                "continue_final_message=True needs the last message's 'content' to be a string"
            )
        chat[-1] = {**chat[-1], "content": final + _CONTINUE_TAG}
    text = render_chat_template(
        template, chat, add_generation_prompt=add_generation_prompt, **variables
    )
    if final is None:
        return text
    tag = _CONTINUE_TAG.strip()
    if final.strip() not in text or tag not in text:
        raise TokenizerError(
            "continue_final_message=True but this template does not render the last message "
            "verbatim, so it cannot be left open; use add_generation_prompt instead"
        )
    at = text.rindex(tag)
    return text[:at] if text[at:].startswith(_CONTINUE_TAG) else text[:at].rstrip()


def to_output(
    ids: list[list[int]], *, batched: bool, return_tensors: str | None, return_dict: bool
) -> Any:
    """Token ids shaped as transformers returns them (list, [B, T] tensor, or a dict of those)."""
    if return_tensors not in (None, "pt", "np"):
        raise TokenizerError(
            f"return_tensors={return_tensors!r} is not supported; use 'pt', 'np' or None"
        )
    mask: Any = [[1] * len(x) for x in ids]
    out: Any = ids
    if return_tensors is not None:
        if len({len(x) for x in ids}) > 1:
            raise TokenizerError(
                f"return_tensors={return_tensors!r} needs conversations of equal token length, got "
                f"{sorted({len(x) for x in ids})}; use return_tensors=None and pad the lists"
            )
        if return_tensors == "pt":
            import torch

            out, mask = torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)
        else:
            import numpy as np

            out, mask = np.array(ids, dtype=np.int64), np.array(mask, dtype=np.int64)
    elif not batched:
        out, mask = ids[0], mask[0]
    return {"input_ids": out, "attention_mask": mask} if return_dict else out
