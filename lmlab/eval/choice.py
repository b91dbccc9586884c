"""Multiple-choice scoring in the HellaSwag style: which ending does the model find most likely?

The prompt is built as lm-evaluation-harness's `hellaswag` task builds it: `activity_label: ctx_a
Ctx_b` (or `ctx`), WikiHow markup removed, each ending appended after one space. Each ending's
log-likelihood is the sum of log-probabilities of its tokens given the context. Three accuracies:

- `acc`: argmax of that sum (lm-evaluation-harness's `acc`; nanoGPT/llm.c's `acc`, the argmin of the
  summed loss, is the same rule).
- `acc_norm`: argmax of the sum divided by the ending's length in characters (the cleaned ending
  without its leading space) -- lm-evaluation-harness's `acc_norm`, the number leaderboards report.
- `acc_norm_tokens`: argmax of the sum divided by the ending's number of tokens, i.e. the argmin of
  the mean per-token loss: the `acc_norm` of Karpathy's nanoGPT/llm.c `hellaswag.py`. That script
  prompts with the raw `ctx` (no activity label, no cleaning), so its numbers differ a little.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from lmlab.eval.perplexity import _device, logits_of
from lmlab.tokenizers.base import Tokenizer


@dataclass(frozen=True)
class ChoiceItem:
    """A context, its candidate endings and the index of the right one."""

    context: str
    endings: list[str]
    label: int
    id: Any = None


@dataclass
class ChoiceResult:
    """Accuracy by summed (`acc`), per-character (`acc_norm`) and per-token (`acc_norm_tokens`)
    log-likelihood of the endings (see the module doc), and per-item details."""

    acc: float
    acc_norm: float
    n: int
    items: list[dict[str, Any]] = field(default_factory=list)
    acc_norm_tokens: float = 0.0


def clean(text: str) -> str:
    """HellaSwag's WikiHow markup removed: ` [title]` -> `. `, other `[tags]` dropped, double spaces."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def item_from_record(d: dict[str, Any], where: str = "record") -> ChoiceItem:
    """One HellaSwag jsonl record (`ctx` or `ctx_a`/`ctx_b`, `endings`, `label`) as a `ChoiceItem`."""
    if d.get("ctx_a") is not None:  # a parquet export holds None where a jsonl has no field
        ctx = d["ctx_a"] + " " + str(d.get("ctx_b") or "").capitalize()
    elif d.get("ctx") is not None:
        ctx = d["ctx"]
    else:
        raise ValueError(
            f"{where}: no 'ctx' (or 'ctx_a'/'ctx_b') field; HellaSwag records have them"
        )
    if d.get("activity_label"):
        ctx = f"{d['activity_label']}: {ctx}"
    endings = d.get("endings")
    if not isinstance(endings, list) or len(endings) < 2:
        raise ValueError(
            f"{where}: 'endings' must be a list of at least 2 strings, got {endings!r:.80}"
        )
    try:
        label = int(d["label"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            f"{where}: 'label' must be the index of the right ending, got {d.get('label')!r}"
        ) from None
    if not 0 <= label < len(endings):
        raise ValueError(f"{where}: label {label} is not an index into its {len(endings)} endings")
    return ChoiceItem(clean(ctx), [clean(e) for e in endings], label, d.get("ind", d.get("id")))


def read_hellaswag(path: str | Path, limit: int | None = None) -> list[ChoiceItem]:
    """Items of a HellaSwag-format jsonl file (one JSON object per line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; pass a HellaSwag-format .jsonl file")
    items = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{path}:{n} is not a JSON object ({e.msg}); the file must be jsonl"
            ) from None
        items.append(item_from_record(record, f"{path}:{n}"))
        if limit is not None and len(items) >= limit:
            break
    return items


def choice_tokens(tokenizer: Tokenizer, item: ChoiceItem) -> list[tuple[list[int], int]]:
    """For each ending: (context + " " + ending ids, number of context ids)."""
    ctx = tokenizer.encode(item.context, add_special=True)
    return [(ctx + tokenizer.encode(" " + e), len(ctx)) for e in item.endings]


@torch.inference_mode()
def score_choices(
    model: Any,
    tokenizer: Tokenizer,
    items: list[ChoiceItem],
    *,
    batch_size: int = 8,
    max_len: int | None = None,
    device: Any = None,
    progress: bool = True,
) -> ChoiceResult:
    """Score every ending of every item in padded batches; return acc, acc_norm (per character),
    acc_norm_tokens (per token) and per-item details."""
    if not items:
        raise ValueError("no items to score; the data file was empty")
    dev = _device(model, device)
    if hasattr(model, "eval"):
        model.eval()
    max_len = max_len or getattr(getattr(model, "cfg", None), "max_seq_len", None) or 2048
    seqs = []  # (item index, ending index, ids, first continuation position)
    for i, item in enumerate(items):
        for j, (ids, n_ctx) in enumerate(choice_tokens(tokenizer, item)):
            if len(ids) - n_ctx >= max_len:
                raise ValueError(
                    f"item {i} ending {j} has {len(ids) - n_ctx} tokens, beyond max_len={max_len}"
                )
            cut = max(len(ids) - max_len, 0)  # drop the oldest context tokens if too long
            seqs.append((i, j, ids[cut:], n_ctx - cut))
    # similar lengths share a batch
    order = sorted(range(len(seqs)), key=lambda k: -len(seqs[k][2]))
    loglik = [[0.0] * len(it.endings) for it in items]
    n_tokens = [[0] * len(it.endings) for it in items]
    for b in tqdm(range(0, len(order), batch_size), desc="choices", disable=not progress):
        batch = [seqs[k] for k in order[b : b + batch_size]]
        width = max(len(s[2]) for s in batch)
        # right padding does not affect a causal LM
        tokens = torch.zeros(len(batch), width, dtype=torch.long)
        for r, (_, _, ids, _) in enumerate(batch):
            tokens[r, : len(ids)] = torch.tensor(ids)
        logp = torch.log_softmax(logits_of(model, tokens.to(dev)).float(), dim=-1)
        for r, (i, j, ids, first) in enumerate(batch):
            target = torch.tensor(ids[first:], device=dev)
            n_tokens[i][j] = len(target)
            loglik[i][j] = (
                logp[r, first - 1 : len(ids) - 1].gather(-1, target[:, None]).sum().item()
            )
    details, hits, hits_norm, hits_tok = [], 0, 0, 0
    for item, ll, nt in zip(items, loglik, n_tokens, strict=True):
        norm = [v / max(len(e), 1) for v, e in zip(ll, item.endings, strict=True)]
        per_tok = [v / max(n, 1) for v, n in zip(ll, nt, strict=True)]
        pred, pred_norm, pred_tok = _argmax(ll), _argmax(norm), _argmax(per_tok)
        hits += pred == item.label
        hits_norm += pred_norm == item.label
        hits_tok += pred_tok == item.label
        details.append({"id": item.id, "label": item.label, "pred": pred, "pred_norm": pred_norm,
                        "pred_norm_tokens": pred_tok, "loglik": ll, "loglik_norm": norm,
                        "n_tokens": nt})  # fmt: skip
    n = len(items)
    return ChoiceResult(
        acc=hits / n, acc_norm=hits_norm / n, n=n, items=details, acc_norm_tokens=hits_tok / n
    )


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)
