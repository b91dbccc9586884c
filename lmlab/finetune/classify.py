"""Sequence classification on any lmlab model: a linear head on the last real token (or a pool).

Choose what trains (the last k blocks, the final norm, the head, or PEFT parameters); blocks
before the first trainable one are frozen, so their outputs are computed once and cached.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from lmlab.finetune.data import LabeledTexts
from lmlab.finetune.metrics import ClassificationReport, classification_report
from lmlab.train.optimizers import can_fuse

POOLS = ("last", "mean", "first")


class SequenceClassifier(nn.Module):
    """`model` (optionally cut after `n_layers` blocks) + final norm + pooling + linear head."""

    def __init__(
        self, model: nn.Module, n_classes: int, *, pool: str = "last", n_layers: int | None = None
    ):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool={pool!r}; choose one of {POOLS}")
        total = model.cfg.n_layers
        if n_layers is not None and not 1 <= n_layers <= total:
            raise ValueError(f"n_layers={n_layers} must be in 1..{total} (the model's blocks)")
        if n_classes < 2:
            raise ValueError(f"n_classes={n_classes}: a classifier needs at least 2 classes")
        self.model, self.pool, self.n_layers = model, pool, n_layers or total
        self.head = nn.Linear(model.cfg.d_model, n_classes, bias=True)
        nn.init.normal_(self.head.weight, std=model.cfg.d_model**-0.5)
        nn.init.zeros_(self.head.bias)

    def freeze(self, train_blocks: int = 1, train_norm: bool = True) -> None:
        """Train only the last `train_blocks` used blocks (-1: all of the model), the final norm and the head."""
        m = self.model
        for p in m.parameters():
            p.requires_grad_(train_blocks < 0)
        for i in range(max(0, self.n_layers - max(train_blocks, 0)), self.n_layers):
            for p in m.blocks[i].parameters():
                p.requires_grad_(True)
        if train_norm and m.ln_final is not None:
            for p in m.ln_final.parameters():
                p.requires_grad_(True)
        for p in self.head.parameters():
            p.requires_grad_(True)

    def frozen_layers(self) -> int:
        """How many leading blocks have nothing trainable and nothing injected before them."""
        m = self.model
        if m._forward_pre_hooks or m._forward_hooks:
            return 0  # prompt/prefix tuning change the inputs of every block
        for name, p in m.named_parameters():
            if p.requires_grad and not name.startswith(("blocks.", "ln_final.", "unembed.")):
                return 0
        for i in range(self.n_layers):
            if any(p.requires_grad for p in m.blocks[i].parameters()):
                return i
        return self.n_layers

    def hidden(
        self,
        tokens: torch.Tensor,
        mask: torch.Tensor,
        start: int = 0,
        x: torch.Tensor | None = None,
    ):
        """Residual stream [B, T, d] after `n_layers` blocks and the final norm (from block `start` given `x`)."""
        m = self.model
        inp, first = (tokens, None) if start == 0 else (x, start)
        if self.n_layers == m.cfg.n_layers:
            return m(inp, attention_mask=mask, start_at_layer=first, return_hidden=True)
        x = m(inp, attention_mask=mask, start_at_layer=first, stop_at_layer=self.n_layers)
        return m.ln_final(x) if m.ln_final is not None else x

    def pooled(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, T, d] -> [B, d]: the last real token, the mean over real tokens, or the first."""
        if self.pool == "first":
            return h[:, 0]
        if h.shape[1] != mask.shape[1]:
            # prompt tuning prepended virtual tokens: they count as real
            extra = torch.ones(
                mask.shape[0], h.shape[1] - mask.shape[1], dtype=mask.dtype, device=mask.device
            )
            mask = torch.cat([extra, mask], 1)
        if self.pool == "mean":
            w = mask.to(h.dtype).unsqueeze(-1)
            return (h * w).sum(1) / w.sum(1).clamp(min=1)
        last = (mask.long() * torch.arange(mask.shape[1], device=mask.device)).argmax(1)
        return h[torch.arange(h.shape[0], device=h.device), last]

    def forward(
        self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """tokens [B, T] (right- or left-padded) -> class logits [B, C]."""
        mask = attention_mask if attention_mask is not None else torch.ones_like(tokens)
        return self.head(self.pooled(self.hidden(tokens, mask), mask))

    def logits_from(self, x: torch.Tensor, mask: torch.Tensor, start: int) -> torch.Tensor:
        """Class logits from cached residuals `x` [B, T, d] entering block `start`."""
        return self.head(self.pooled(self.hidden(None, mask, start, x), mask))


# ---------------------------------------------------------------------------- data to batches


def encode(texts: list[str], tokenizer, max_len: int, add_special: bool = False) -> list[list[int]]:
    """Token ids per text, cut to `max_len` (keeping the start)."""
    if max_len < 1:
        raise ValueError(f"max_len={max_len} must be >= 1")
    out = []
    for t in texts:
        ids = tokenizer.encode(t, add_special=add_special)[:max_len]
        out.append(ids or [tokenizer.eos_id or 0])
    return out


def pad_batch(rows: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists -> tokens [B, T], mask [B, T]."""
    T = max(map(len, rows))
    tokens = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for b, r in enumerate(rows):
        tokens[b, : len(r)] = torch.tensor(r)
        mask[b, : len(r)] = 1
    return tokens, mask


def batches(
    n: int, size: int, shuffle: bool, seed: int, lengths: list[int] | None = None
) -> list[list[int]]:
    """Index batches; without shuffling, sorted by length so little padding is computed."""
    order = list(range(n))
    if shuffle:
        random.Random(seed).shuffle(order)
    elif lengths is not None:
        order.sort(key=lambda i: lengths[i])
    return [order[i : i + size] for i in range(0, n, size)]


@torch.no_grad()
def frozen_features(
    clf: SequenceClassifier,
    ids: list[list[int]],
    start: int,
    batch_size: int = 32,
    desc: str = "frozen blocks",
) -> list[torch.Tensor]:
    """Residuals entering block `start` for each example ([T_i, d]), computed once."""
    out: list[torch.Tensor | None] = [None] * len(ids)
    lengths = [len(r) for r in ids]
    for ix in tqdm(batches(len(ids), batch_size, False, 0, lengths), desc=desc, leave=False):
        tokens, mask = pad_batch([ids[i] for i in ix])
        x = residual_at(clf.model, tokens, mask, start)
        for b, i in enumerate(ix):
            out[i] = x[b, : lengths[i]].clone()
    return out


def residual_at(
    model: nn.Module, tokens: torch.Tensor, mask: torch.Tensor, layer: int
) -> torch.Tensor:
    """The residual stream entering block `layer` (the output of the last block when it is n_layers)."""
    if layer < model.cfg.n_layers:
        return model(tokens, attention_mask=mask, stop_at_layer=layer)
    seen = []
    handle = model.blocks[layer - 1].register_forward_hook(lambda m, a, out: seen.append(out))
    try:
        model(tokens, attention_mask=mask, return_hidden=True)
    finally:
        handle.remove()
    return seen[0]


# ---------------------------------------------------------------------------- training


@dataclass
class ClassifyConfig:
    """Training knobs; `train_blocks`/`train_norm` apply when `freeze` is True."""

    max_len: int = 64
    epochs: int = 3
    batch_size: int = 16
    lr: float = 1e-4
    head_lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_frac: float = 0.05
    train_blocks: int = 1
    train_norm: bool = True
    freeze: bool = True
    cache_frozen: bool = True
    eval_batch_size: int = 64
    seed: int = 0

    # the knobs `lmlab finetune classify` and the spam recipe expose under the same names
    SHARED: ClassVar[tuple[str, ...]] = (
        "max_len", "epochs", "batch_size", "lr", "head_lr", "train_blocks", "seed",
    )  # fmt: skip

    @classmethod
    def from_settings(cls, settings: Any) -> ClassifyConfig:
        """A config from an object carrying the `SHARED` knobs (CLI arguments, a recipe config)."""
        return cls(**{name: getattr(settings, name) for name in cls.SHARED})


@dataclass
class ClassifyResult:
    """What `train_classifier` measured."""

    history: list[dict]
    val: ClassificationReport | None
    test: ClassificationReport | None
    train_seconds: float
    trainable_params: int
    frozen_layers: int


class _Examples:
    """Encoded examples, with cached residuals from the frozen blocks when possible."""

    def __init__(
        self,
        clf: SequenceClassifier,
        data: LabeledTexts,
        tok,
        cfg: ClassifyConfig,
        start: int,
        desc: str,
    ):
        self.ids = encode(data.texts, tok, cfg.max_len)
        self.labels = torch.tensor(data.labels)
        self.start = start
        self.feats = (
            frozen_features(clf, self.ids, start, cfg.eval_batch_size, desc) if start > 0 else None
        )

    def __len__(self) -> int:
        return len(self.ids)

    def logits(self, clf: SequenceClassifier, ix: list[int]) -> torch.Tensor:
        if self.feats is None:
            tokens, mask = pad_batch([self.ids[i] for i in ix])
            return clf(tokens, mask)
        rows = [self.feats[i] for i in ix]
        T = max(r.shape[0] for r in rows)
        x = rows[0].new_zeros(len(rows), T, rows[0].shape[-1])
        mask = torch.zeros(len(rows), T, dtype=torch.long)
        for b, r in enumerate(rows):
            x[b, : r.shape[0]], mask[b, : r.shape[0]] = r, 1
        return clf.logits_from(x, mask, self.start)


@torch.no_grad()
def predict(clf: SequenceClassifier, ex: _Examples, batch_size: int) -> torch.Tensor:
    """Predicted class per example."""
    was = clf.training
    clf.eval()
    preds = torch.empty(len(ex), dtype=torch.long)
    lengths = [len(r) for r in ex.ids]
    for ix in batches(len(ex), batch_size, False, 0, lengths):
        preds[ix] = ex.logits(clf, ix).argmax(-1)
    clf.train(was)
    return preds


def train_classifier(
    clf: SequenceClassifier,
    tokenizer,
    train: LabeledTexts,
    val: LabeledTexts | None = None,
    test: LabeledTexts | None = None,
    cfg: ClassifyConfig | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> ClassifyResult:
    """Train with AdamW + linear warmup/decay and cross-entropy; evaluate val each epoch and test at the end."""
    cfg = cfg or ClassifyConfig()
    torch.manual_seed(cfg.seed)
    if cfg.freeze:
        clf.freeze(cfg.train_blocks, cfg.train_norm)
    params = [p for p in clf.parameters() if p.requires_grad]
    if not params:
        raise ValueError(
            "nothing to train: every parameter is frozen (train_blocks/train_norm, or PEFT)"
        )
    start = clf.frozen_layers() if cfg.cache_frozen else 0
    t0 = time.perf_counter()
    tr = _Examples(clf, train, tokenizer, cfg, start, "cache train")
    va = _Examples(clf, val, tokenizer, cfg, start, "cache val") if val is not None else None
    te = _Examples(clf, test, tokenizer, cfg, start, "cache test") if test is not None else None
    head = [p for p in clf.head.parameters()]
    body = [p for p in params if all(p is not h for h in head)]
    groups = [{"params": head, "lr": cfg.head_lr}] + (
        [{"params": body, "lr": cfg.lr}] if body else []
    )
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay, fused=can_fuse(params))
    steps = cfg.epochs * math.ceil(len(tr) / cfg.batch_size)
    warm = max(1, int(cfg.warmup_frac * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm)))
    )
    history = []
    clf.train()
    bar = tqdm(total=steps, desc="classify", leave=False)
    for epoch in range(cfg.epochs):
        total, n = 0.0, 0
        for ix in batches(len(tr), cfg.batch_size, True, cfg.seed + epoch):
            loss = F.cross_entropy(tr.logits(clf, ix), tr.labels[ix])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            total, n = total + loss.item() * len(ix), n + len(ix)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
        row = {"epoch": epoch + 1, "train_loss": total / n, "seconds": time.perf_counter() - t0}
        if va is not None:
            row["val_accuracy"] = classification_report(
                predict(clf, va, cfg.eval_batch_size), va.labels, val.names
            ).accuracy
        history.append(row)
        if on_epoch:
            on_epoch(row)
    bar.close()
    seconds = time.perf_counter() - t0
    val_rep = (
        classification_report(predict(clf, va, cfg.eval_batch_size), va.labels, val.names)
        if va
        else None
    )
    test_rep = (
        classification_report(predict(clf, te, cfg.eval_batch_size), te.labels, test.names)
        if te
        else None
    )
    return ClassifyResult(
        history, val_rep, test_rep, seconds, sum(p.numel() for p in params), start
    )
