"""Beam search with length penalty and early stopping: its own beam bookkeeping on the decode
core's `Decoder` (prefill, cached step, cache reordering)."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from lmlab.errors import InputError
from lmlab.generate.decode import Decoder, left_pad


class Hypothesis(NamedTuple):
    """One returned completion: its tokens, length-normalized log-prob and why it ended."""

    tokens: list[int]
    score: float
    reason: str  # "stop_id" or "length"


class Finished:
    """The best `n` finished hypotheses of one prompt, scored sum_logprob / length**penalty."""

    def __init__(self, n: int, length_penalty: float, early_stopping: bool) -> None:
        self.n, self.penalty, self.early = n, length_penalty, early_stopping
        self.hyps: list[tuple[float, list[int]]] = []

    def add(self, tokens: list[int], logprob: float) -> None:
        score = logprob / max(len(tokens), 1) ** self.penalty
        self.hyps.append((score, tokens))
        self.hyps.sort(key=lambda h: -h[0])
        del self.hyps[self.n :]

    def done(self, best_running: float, length: int) -> bool:
        """No running beam can still beat the worst kept hypothesis."""
        if len(self.hyps) < self.n:
            return False
        if self.early:
            return True
        return self.hyps[-1][0] >= best_running / max(length, 1) ** self.penalty


@torch.no_grad()
def beam_search(
    model: Any,
    ids: list[list[int]],
    *,
    num_beams: int,
    max_new_tokens: int,
    stop_ids: set[int],
    length_penalty: float = 1.0,
    early_stopping: bool = False,
    num_return_sequences: int = 1,
) -> list[Hypothesis]:
    """Keep the `num_beams` best partial completions per prompt; return the best finished ones
    (`num_return_sequences` per prompt, best first, prompts in order)."""
    if not 1 <= num_return_sequences <= num_beams:
        raise InputError(
            f"num_return_sequences={num_return_sequences} must be in [1, num_beams={num_beams}]"
        )
    device = next(model.parameters()).device
    P, K = len(ids), num_beams
    pad = model.cfg.pad_id  # pads are masked: any id inside the vocabulary works
    tokens, mask = left_pad([row for row in ids for _ in range(K)], pad)
    decoder = Decoder(model, P * K, tokens.shape[1] + max_new_tokens)
    logits = decoder.prefill(tokens.to(device), mask.to(device))
    scores = torch.full((P, K), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    beams: list[list[int]] = [[] for _ in range(P * K)]
    finished = [Finished(K, length_penalty, early_stopping) for _ in range(P)]
    done = [False] * P
    for step in range(max_new_tokens):
        logp = logits.float().log_softmax(-1).view(P, K, -1) + scores[..., None]
        V = logp.shape[-1]
        top, flat = logp.view(P, -1).topk(2 * K, dim=-1)
        src_rows, new_tokens, new_scores = [], [], []
        for p in range(P):
            kept = 0
            for rank, (s, f) in enumerate(zip(top[p].tolist(), flat[p].tolist(), strict=True)):
                beam, tok = divmod(f, V)
                row = p * K + beam
                if done[p]:
                    src_rows.append(row), new_tokens.append(pad), new_scores.append(0.0)
                    kept += 1
                elif tok in stop_ids:
                    # an EOS among the top K candidates ends a hypothesis
                    if rank < K and s > float("-inf"):
                        finished[p].add([*beams[row], tok], s)
                    continue
                else:
                    src_rows.append(row), new_tokens.append(tok), new_scores.append(s)
                    kept += 1
                if kept == K:
                    break
            if not done[p]:
                best = max(new_scores[-K:])
                done[p] = finished[p].done(best, step + 1)
        if all(done) or step + 1 == max_new_tokens:
            beams = [[*beams[r], t] for r, t in zip(src_rows, new_tokens, strict=True)]
            scores = torch.tensor(new_scores, device=device).view(P, K)
            break
        index = torch.tensor(src_rows, device=device)
        decoder.reorder(index)
        beams = [[*beams[r], t] for r, t in zip(src_rows, new_tokens, strict=True)]
        scores = torch.tensor(new_scores, device=device).view(P, K)
        logits = decoder.step(torch.tensor(new_tokens, device=device))
    out = []
    for p in range(P):
        if not done[p]:  # unfinished beams compete with the finished hypotheses
            for k in range(K):
                finished[p].add(beams[p * K + k], scores[p, k].item())
        for score, hyp in finished[p].hyps[:num_return_sequences]:
            reason = "stop_id" if hyp and hyp[-1] in stop_ids else "length"
            out.append(Hypothesis(hyp, score, reason))
    return out
