"""`generate` and `stream_generate`: prompts in, completions out, on the decode core (`decode.py`)."""

from __future__ import annotations

import numbers
import operator
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lmlab.errors import InputError
from lmlab.generate.beam import beam_search
from lmlab.generate.decode import Decoding, check_context, left_pad
from lmlab.generate.sampling import SamplingConfig
from lmlab.generate.stream import TextStream

__all__ = ["GenerationOutput", "check_context", "generate", "left_pad", "stream_generate"]

Prompts = str | Sequence[str] | Sequence[Sequence[int]] | torch.Tensor


@dataclass
class GenerationOutput:
    """Completions per row (prompt excluded; a stop token that ended a row is kept)."""

    sequences: list[list[int]]
    prompt_lengths: list[int]
    finish_reasons: list[str]  # "stop_id", "stop_string" or "length"
    texts: list[str] | None = None
    scores: list[float] | None = field(default=None)  # beam search: length-normalized log-prob


def encode_prompts(prompts: Prompts, tokenizer: Any, add_special: bool = True) -> list[list[int]]:
    """Token id lists from strings (needs a tokenizer), id lists, or a [B, T] tensor."""
    if isinstance(prompts, torch.Tensor):
        if prompts.is_floating_point() or prompts.is_complex() or prompts.dim() not in (1, 2):
            raise InputError(
                f"a prompt tensor must hold integer token ids as [T] or [B, T], got {prompts.dtype} "
                f"of shape {list(prompts.shape)} — use torch.long ids"
            )
        rows = prompts.unsqueeze(0) if prompts.dim() == 1 else prompts
        ids = [r.tolist() for r in rows]
    elif isinstance(prompts, str) or (
        isinstance(prompts, Sequence) and prompts and isinstance(prompts[0], str)
    ):
        if tokenizer is None:
            raise InputError(
                "text prompts need a tokenizer — generate(model, prompts, tokenizer=tok)"
            )
        texts = [prompts] if isinstance(prompts, str) else list(prompts)
        ids = [tokenizer.encode(t, add_special=add_special) for t in texts]
    else:
        try:
            ids = [[_token_id(t) for t in p] for p in prompts]
        except TypeError:
            raise InputError(
                f"prompts must be text, a list of token-id lists or a [B, T] tensor, got "
                f"{_short(prompts)} — wrap one prompt's ids in a list: [[1, 2, 3]]"
            ) from None
    if not ids or any(len(p) == 0 for p in ids):
        raise InputError("empty prompt: every prompt needs at least one token")
    return ids


def _token_id(t: Any) -> int:
    """An int id (Python, NumPy or 0-d tensor integer); anything else is an `InputError`."""
    try:
        if isinstance(t, bool):
            raise TypeError
        return operator.index(t)
    except TypeError:
        raise InputError(f"token id {_short(t)} is not an int — prompts of ids hold ints") from None


def _short(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 40 else text[:37] + "..."


def check_ids(model: Any, ids: list[list[int]]) -> None:
    """Every prompt token must have an embedding row; names the first id that does not."""
    vocab = model.cfg.vocab_size
    for row, prompt in enumerate(ids):
        bad = next((t for t in prompt if not 0 <= t < vocab), None)
        if bad is not None:
            raise InputError(
                f"token id {bad} in prompt {row} is outside the model's vocabulary of {vocab} ids "
                f"(0..{vocab - 1}) — use the tokenizer the model was trained with"
            )


def check_settings(
    max_new_tokens: int,
    sampling: SamplingConfig,
    num_beams: int = 1,
    num_return_sequences: int = 1,
) -> None:
    """Refuse a request that cannot run or would silently ignore a setting (before any work)."""
    for name, value in (
        ("max_new_tokens", max_new_tokens),
        ("num_beams", num_beams),
        ("num_return_sequences", num_return_sequences),
    ):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise InputError(f"{name}={value!r} must be an int >= 1")
    if num_beams > 1 and sampling.changed():
        raise InputError(
            f"num_beams={num_beams} with {', '.join(sampling.changed())}: beam search keeps the "
            "most likely continuations and would ignore these sampling settings — drop them, or "
            "use num_beams=1 to sample"
        )
    if num_beams > 1 and num_return_sequences > num_beams:
        raise InputError(
            f"num_return_sequences={num_return_sequences} must be <= num_beams={num_beams}"
        )


def resolve_stop_ids(stop_ids: Sequence[int | str] | None, tokenizer: Any, model: Any) -> set[int]:
    """Stop token ids; strings are looked up as special tokens. Default: the EOS id(s)."""
    vocab = model.cfg.vocab_size
    if stop_ids is None:
        found = {getattr(tokenizer, "eos_id", None), model.cfg.eos_token_id}
        return {i for i in found if i is not None and 0 <= i < vocab}
    out = set()
    specials = getattr(tokenizer, "special_tokens", {}) if tokenizer is not None else {}
    for s in stop_ids:
        if isinstance(s, str):
            if s not in specials:
                near = ", ".join(sorted(specials)[:8])
                raise InputError(
                    f"unknown stop token {s!r} — this tokenizer's special tokens: {near}"
                )
            s = specials[s]
        if not 0 <= int(s) < vocab:
            raise InputError(f"unknown stop token id {s} — the vocabulary has ids 0..{vocab - 1}")
        out.add(int(s))
    return out


def _generator(model: Any, seed: int | None) -> torch.Generator | None:
    """A generator seeded with `seed` on the model's device, or None (torch's global RNG)."""
    if seed is None:
        return None
    return torch.Generator(device=next(model.parameters()).device).manual_seed(seed)


@torch.no_grad()
def generate(
    model: Any,
    prompts: Prompts,
    *,
    tokenizer: Any = None,
    sampling: SamplingConfig | None = None,
    max_new_tokens: int = 64,
    stop_ids: Sequence[int | str] | None = None,
    stop_strings: Sequence[str] | None = None,
    seed: int | None = None,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    early_stopping: bool = False,
    num_return_sequences: int = 1,
    add_special: bool = True,
    compile: bool = False,
    **overrides: Any,
) -> GenerationOutput:
    """Complete each prompt; rows of different lengths are left-padded and decoded together.

    `sampling` chooses the tokens (default greedy); its fields may also be given as keywords
    (`temperature=0.8, top_p=0.95`), which override it. Hooks registered on the model
    (`model.hooks(...)`) stay active at every step. `compile=True` runs the decode steps through
    `torch.compile` (static cache): the first call compiles, later calls of similar length and
    batch are faster (beam search stays eager).
    """
    sampling = (sampling or SamplingConfig()).updated(overrides, "generate", GENERATE_SETTINGS)
    check_settings(max_new_tokens, sampling, num_beams, num_return_sequences)
    ids = encode_prompts(prompts, tokenizer, add_special)
    check_ids(model, ids)
    check_context(model, max(map(len, ids)), max_new_tokens)
    stops = resolve_stop_ids(stop_ids, tokenizer, model)
    if stop_strings and tokenizer is None:
        raise InputError("stop_strings need a tokenizer to decode the text — pass tokenizer=...")
    n = num_return_sequences
    lengths = [len(r) for r in ids for _ in range(n)]
    if num_beams > 1:
        hyps = beam_search(
            model, ids, num_beams=num_beams, max_new_tokens=max_new_tokens, stop_ids=stops,
            length_penalty=length_penalty, early_stopping=early_stopping, num_return_sequences=n,
        )  # fmt: skip
        seqs = [h.tokens for h in hyps]
        texts = None
        if tokenizer is not None:
            texts = [tokenizer.decode(s, skip_special=True) for s in seqs]
        return GenerationOutput(
            seqs, lengths, [h.reason for h in hyps], texts, [h.score for h in hyps]
        )
    run = Decoding(
        model, ids, sampling, max_new_tokens, stop_ids=stops, generator=_generator(model, seed),
        group_size=n, compile=compile,
    )  # fmt: skip
    B = len(lengths)
    out: list[list[int]] = [[] for _ in range(B)]
    reasons = ["length"] * B
    texts: list[str] | None = [""] * B if tokenizer is not None else None
    for step in run:
        for b, (t, alive) in enumerate(zip(step.tokens.tolist(), step.alive.tolist(), strict=True)):
            if not alive:
                continue
            out[b].append(t)
            if t in stops:
                reasons[b] = "stop_id"
            elif stop_strings:
                text = tokenizer.decode(out[b], skip_special=True)
                hit = [text.index(s) for s in stop_strings if s in text]
                if hit:
                    reasons[b], texts[b] = "stop_string", text[: min(hit)]
                    run.finish(b)
    if texts is not None:
        for b in range(B):
            if reasons[b] != "stop_string":
                texts[b] = tokenizer.decode(out[b], skip_special=True)
    return GenerationOutput(out, lengths, reasons, texts)


# keywords of `generate` besides the sampling fields (named in the error for an unknown one)
GENERATE_SETTINGS = (
    "tokenizer", "sampling", "max_new_tokens", "stop_ids", "stop_strings", "seed", "num_beams",
    "length_penalty", "early_stopping", "num_return_sequences", "add_special", "compile",
)  # fmt: skip
STREAM_SETTINGS = ("sampling", "max_new_tokens", "stop_ids", "seed", "compile")


@torch.no_grad()
def stream_generate(
    model: Any,
    prompt: str | Sequence[int],
    tokenizer: Any,
    *,
    sampling: SamplingConfig | None = None,
    max_new_tokens: int = 256,
    stop_ids: Sequence[int | str] | None = None,
    seed: int | None = None,
    compile: bool = False,
    **overrides: Any,
) -> Iterator[str]:
    """Yield decoded text pieces of one completion as its tokens arrive (greedy or sampled);
    sampling fields may be given as keywords, as for `generate`."""
    sampling = (sampling or SamplingConfig()).updated(overrides, "stream_generate", STREAM_SETTINGS)
    check_settings(max_new_tokens, sampling)
    ids = encode_prompts(prompt if isinstance(prompt, (str, torch.Tensor)) else [prompt], tokenizer)
    check_ids(model, ids)
    check_context(model, len(ids[0]), max_new_tokens)
    stops = resolve_stop_ids(stop_ids, tokenizer, model)
    run = Decoding(
        model, ids, sampling, max_new_tokens, stop_ids=stops, generator=_generator(model, seed),
        compile=compile,
    )  # fmt: skip
    stream = TextStream(tokenizer)
    for step in run:
        t = int(step.tokens[0])
        if t in stops:
            break
        piece = stream.push(t)
        if piece:
            yield piece
    tail = stream.flush()
    if tail:
        yield tail
