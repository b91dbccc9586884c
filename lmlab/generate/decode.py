"""The decode core: prefill, cached one-token steps, token choice and stop rules.

Every decoder in lmlab runs on this module: `generate` / `stream_generate` and `Chat` iterate
`Decoding`, GRPO rollouts iterate it with log-probs, a shared prompt prefix and packed weights, the
samples printed during training use it one row at a time, and beam search keeps its own beam
bookkeeping on a `Decoder` (the cache and the forward that steps it).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lmlab.errors import InputError
from lmlab.generate import packed as packing
from lmlab.generate.compiled import decoding_cache
from lmlab.generate.sampling import (
    SamplingConfig,
    apply_repetition_penalty,
    choose,
    sample_with_logprobs,
)


def left_pad(ids: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T] tokens and attention mask, padded on the left."""
    T = max(map(len, ids))
    tokens = torch.full((len(ids), T), pad, dtype=torch.long)
    mask = torch.zeros(len(ids), T, dtype=torch.long)
    for b, row in enumerate(ids):
        tokens[b, T - len(row) :] = torch.tensor(list(row), dtype=torch.long)
        mask[b, T - len(row) :] = 1
    return tokens, mask


def check_context(model: nn.Module, prompt_len: int, max_new_tokens: int) -> None:
    """The model reads the prompt and every new token but the last (never fed back); that must fit
    its context."""
    ctx = model.cfg.max_seq_len
    if prompt_len > ctx:
        raise InputError(
            f"prompt of {prompt_len} tokens is longer than the model's context ({ctx}) — shorten it"
        )
    if prompt_len + max_new_tokens - 1 > ctx:
        raise InputError(
            f"prompt of {prompt_len} tokens + max_new_tokens={max_new_tokens} does not fit the "
            f"model's context of {ctx} tokens — lower max_new_tokens to {ctx - prompt_len + 1}"
        )


def shared_prefix_len(prompts: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of all prompts, leaving each at least one own token."""
    first, n = prompts[0], min(map(len, prompts)) - 1
    for p in prompts[1:]:
        i = 0
        while i < n and p[i] == first[i]:
            i += 1
        n = i
    return max(n, 0)


class Decoder:
    """One batch's KV cache and the forward that fills it, built per generation and dropped after.

    compile: steps run through `torch.compile` on a static, bucketed cache (prefills stay eager).
    pack_rows: multiply with weights packed once for the CPU GEMM at this many rows (`PackedWeights`;
    nothing is packed where `can_pack` says it does not pay or the kernel is missing).
    """

    def __init__(
        self,
        model: nn.Module,
        batch_size: int,
        needed: int,
        *,
        compile: bool = False,
        pack_rows: int = 0,
    ) -> None:
        if getattr(model, "unembed", None) is None:
            raise InputError(
                f"{model.cfg.name} has no LM head (an encoder?): decoding needs a causal LM — "
                "load a decoder model"
            )
        self.model = model
        self.device = next(model.parameters()).device
        self.cache, self._step = decoding_cache(model, batch_size, needed, compile)
        pack = pack_rows and not compile and packing.can_pack(model, pack_rows)
        self.packed = packing.PackedWeights(model, pack_rows) if pack else None

    def forward(
        self, tokens: torch.Tensor, mask: torch.Tensor | None = None, *, hidden: bool = False
    ) -> torch.Tensor:
        """Append tokens [B, T] to the cache; logits [B, T, vocab] (final hidden states if `hidden`)."""
        kwargs = {"attention_mask": mask, "cache": self.cache, "return_hidden": hidden}
        if self.packed is not None:
            return self.packed.run(tokens, **kwargs)
        return self.model(tokens, **kwargs)

    def prefill(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Read left-padded prompts [B, T]; logits of their last position [B, vocab] (the LM head
        runs on that position only)."""
        hidden = self.forward(tokens, mask, hidden=True)[:, -1]
        if self.packed is not None:
            return self.packed.logits(hidden)
        return self.model.to_logits(hidden)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one new token per row [B]; next-token logits [B, vocab]."""
        if self.packed is not None:
            return self.packed.run(tokens[:, None], cache=self.cache)[:, -1]
        return self._step(tokens[:, None], cache=self.cache)[:, -1]

    def reorder(self, index: torch.Tensor) -> None:
        """Cache rows become rows `index` of the old cache (repeat a prompt, follow a beam)."""
        self.cache.reorder(index)


@dataclass
class Step:
    """One decode step: tokens [B] (the pad id on rows finished before), their log-probs [B] (with
    `logprobs=True`, else None) and alive [B] (bool: the token belongs to the row's completion)."""

    tokens: torch.Tensor
    logps: torch.Tensor | None
    alive: torch.Tensor


class Decoding:
    """Prefill prompts, then choose and feed back one token per row per step until every row stops.

    A row stops at a stop id (kept as its last token), when the caller calls `finish(row)` (e.g. a
    stop string), or after `max_new_tokens`. Rows of different lengths are left-padded with the
    model's pad id (masked); finished rows get the pad id from then on.

    group_size: decode each prompt that many times (rows p*G .. p*G+G-1), from one prefill per prompt.
    share_prefix: prefill the prompts' common prefix once for all of them (then `prefix` holds it
    and `tokens`/`mask` the rest). logprobs: also return each chosen token's log-probability under
    the temperature alone (what RL ratios are taken against). pack: decode with packed weights
    (`Decoder`). The model runs in eval mode while decoding; its mode is restored after.
    """

    def __init__(
        self,
        model: nn.Module,
        ids: Sequence[Sequence[int]],
        sampling: SamplingConfig,
        max_new_tokens: int,
        *,
        stop_ids: Sequence[int] | set[int] = (),
        generator: torch.Generator | None = None,
        group_size: int = 1,
        share_prefix: bool = False,
        logprobs: bool = False,
        compile: bool = False,
        pack: bool = False,
    ) -> None:
        if not ids or any(len(p) == 0 for p in ids):
            raise InputError("empty prompt: every prompt needs at least one token")
        if logprobs and sampling.repetition_penalty != 1:
            raise InputError(
                f"repetition_penalty={sampling.repetition_penalty} with log-probs (rollouts): the "
                "log-probs would not be those of the policy — leave repetition_penalty at 1"
            )
        self.model, self.sampling, self.max_new_tokens = model, sampling, max_new_tokens
        self.generator, self.group_size, self.logprobs = generator, group_size, logprobs
        self.compile, self.pack = compile, pack
        self.device = next(model.parameters()).device
        self.pad = model.cfg.pad_id  # pads are masked: any id inside the vocabulary works
        self.stops = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=self.device)
        S = shared_prefix_len(ids) if share_prefix else 0
        self.prefix = torch.tensor(list(ids[0][:S]), dtype=torch.long, device=self.device)
        tokens, mask = left_pad([list(p[S:]) for p in ids], self.pad)
        self.tokens, self.mask = tokens.to(self.device), mask.to(self.device)  # [P, T] the rest
        n = len(ids) * group_size
        self.done = torch.zeros(n, dtype=torch.bool, device=self.device)

    def finish(self, row: int) -> None:
        """Stop row `row`: from the next step on it gets the pad id and is no longer alive."""
        self.done[row] = True

    def __iter__(self) -> Iterator[Step]:
        model, P, G = self.model, self.tokens.shape[0], self.group_size
        S = self.prefix.numel()
        needed = S + self.tokens.shape[1] + self.max_new_tokens - 1  # the last is never fed back
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                decoder = Decoder(
                    model, 1 if S else P, needed, compile=self.compile,
                    pack_rows=P * G if self.pack else 0,
                )  # fmt: skip
                yield from self._steps(decoder, S)
        finally:
            model.train(was_training)

    def _steps(self, decoder: Decoder, S: int) -> Iterator[Step]:
        P, G = self.tokens.shape[0], self.group_size
        if S:
            decoder.forward(self.prefix[None], hidden=True)
            decoder.reorder(torch.zeros(P, dtype=torch.long, device=self.device))
        logits = decoder.prefill(self.tokens, self.mask)
        seen = torch.where(self.mask.bool(), self.tokens, self.tokens[:, -1:])  # pads: last token
        if G > 1:
            expand = torch.arange(P, device=self.device).repeat_interleave(G)
            decoder.reorder(expand)
            logits, seen = logits.index_select(0, expand), seen.index_select(0, expand)
        penalty = self.sampling.repetition_penalty
        for step in range(self.max_new_tokens):
            if penalty != 1:
                logits = apply_repetition_penalty(logits.float(), seen, penalty)
            if self.logprobs:
                nxt, lp = sample_with_logprobs(logits, self.sampling, self.generator)
            else:
                nxt, lp = choose(logits.float(), self.sampling, self.generator), None
            alive = ~self.done
            nxt = torch.where(self.done, torch.full_like(nxt, self.pad), nxt)
            self.done |= torch.isin(nxt, self.stops)
            yield Step(nxt, lp, alive)
            if step + 1 == self.max_new_tokens or bool(self.done.all()):
                return
            if penalty != 1:
                seen = torch.cat([seen, nxt[:, None]], 1)
            logits = decoder.step(nxt)
