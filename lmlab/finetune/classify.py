"""Sequence classification on any lmlab model: a linear head on the last real token (or a pool).

Choose what trains (the last k blocks, the final norm, the head, or PEFT parameters); blocks
before the first trainable one are frozen, so their outputs are computed once and cached.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from lmlab.errors import InputError
from lmlab.finetune.data import LabeledTexts
from lmlab.finetune.metrics import ClassificationReport, classification_report
from lmlab.train.config import TrainConfig, finetune_config
from lmlab.train.task import EpochOrder, steps_per_epoch
from lmlab.train.trainer import Callback, Trainer

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


def _classify_train() -> TrainConfig:
    return finetune_config(batch_size=16, lr=1e-4, grad_clip=1.0, warmup_steps=5)


@dataclass
class ClassifyConfig:
    """What classification needs beyond the shared training knobs in `train` (lr, batch_size,
    seed, out_dir, resume, ...): the head's lr, what trains, and `epochs` (> 0: sets
    `train.max_steps` to that many passes; validation accuracy is measured after each epoch).
    `train_blocks`/`train_norm` apply when `freeze` is True."""

    train: TrainConfig = field(default_factory=_classify_train)
    epochs: int = 3
    max_len: int = 64
    head_lr: float = 1e-3
    train_blocks: int = 1
    train_norm: bool = True
    freeze: bool = True
    cache_frozen: bool = True
    eval_batch_size: int = 64

    # the knobs `lmlab finetune classify` and the spam recipe expose under the same names
    SHARED: ClassVar[tuple[str, ...]] = (
        "max_len", "epochs", "batch_size", "lr", "head_lr", "train_blocks", "seed",
    )  # fmt: skip

    @classmethod
    def from_settings(cls, settings: Any, **train: Any) -> ClassifyConfig:
        """A config from an object carrying the `SHARED` knobs (CLI arguments, a recipe config);
        those that are `TrainConfig` fields go into `train`, as do the `train` keywords."""
        own = {f.name for f in fields(cls)}
        values = {n: getattr(settings, n) for n in cls.SHARED}
        train_kw = {n: v for n, v in values.items() if n not in own}
        base = _classify_train().to_dict()
        return cls(
            train=TrainConfig(**{**base, **train_kw, **train}),
            **{n: v for n, v in values.items() if n in own},
        )


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

    def logits(self, clf: nn.Module, ix: list[int]) -> torch.Tensor:
        """Class logits of examples `ix` (`clf` may be the wrapped network when nothing is cached)."""
        dev = next(clf.parameters()).device
        if self.feats is None:
            tokens, mask = pad_batch([self.ids[i] for i in ix])
            return clf(tokens.to(dev), mask.to(dev))
        rows = [self.feats[i] for i in ix]
        T = max(r.shape[0] for r in rows)
        x = rows[0].new_zeros(len(rows), T, rows[0].shape[-1])
        mask = torch.zeros(len(rows), T, dtype=torch.long)
        for b, r in enumerate(rows):
            x[b, : r.shape[0]], mask[b, : r.shape[0]] = r, 1
        return getattr(clf, "module", clf).logits_from(x.to(dev), mask.to(dev), self.start)


@torch.no_grad()
def predict(clf: SequenceClassifier, ex: _Examples, batch_size: int) -> torch.Tensor:
    """Predicted class per example."""
    was = clf.training
    clf.eval()
    preds = torch.empty(len(ex), dtype=torch.long)
    lengths = [len(r) for r in ex.ids]
    for ix in batches(len(ex), batch_size, False, 0, lengths):
        preds[ix] = ex.logits(clf, ix).argmax(-1).cpu()
    clf.train(was)
    return preds


class ClassifyTask:
    """Shuffled passes over the training examples; cross-entropy summed over examples; after
    each epoch the epoch's mean train loss and (with a validation split) its accuracy."""

    name = "classify"

    def __init__(
        self,
        clf: SequenceClassifier,
        tr: _Examples,
        va: _Examples | None,
        val_names: list[str] | None,
        cfg: ClassifyConfig,
        on_epoch: Callable[[dict], None] | None = None,
    ) -> None:
        self.clf, self.tr, self.va, self.val_names, self.cfg = clf, tr, va, val_names, cfg
        self.on_epoch = on_epoch
        self.order = EpochOrder(len(tr))
        self.loss_sum, self.n, self.t0 = 0.0, 0, time.perf_counter()

    def batch(self, split: str, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        return torch.tensor(self.order.take(batch_size, generator), dtype=torch.long)

    def count(self, ix: torch.Tensor) -> int:
        return len(ix)

    def loss(self, net: nn.Module, ix: torch.Tensor) -> torch.Tensor:
        rows = ix.tolist()
        logits = self.tr.logits(net, rows)
        part = F.cross_entropy(
            logits.float(), self.tr.labels[rows].to(logits.device), reduction="sum"
        )
        self.loss_sum, self.n = self.loss_sum + part.item(), self.n + len(rows)
        return part

    def param_groups(self, model: nn.Module, cfg: TrainConfig) -> list[dict]:
        """The head at `head_lr`, the other trainable parameters at `lr`."""
        head = list(self.clf.head.parameters())
        ids = {id(p) for p in head}
        body = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
        return [
            {"params": head, "lr_scale": self.cfg.head_lr / cfg.lr},
            {"params": body, "lr_scale": 1.0},
        ]

    def evaluate(self, trainer: Trainer) -> dict[str, Any]:
        row: dict[str, Any] = {
            "epoch": self.order.epoch,
            "train_loss": self.loss_sum / max(self.n, 1),
            "seconds": time.perf_counter() - self.t0,
        }
        self.loss_sum, self.n = 0.0, 0
        if self.va is not None:
            preds = predict(self.clf, self.va, self.cfg.eval_batch_size)
            row["val_accuracy"] = classification_report(
                preds, self.va.labels, self.val_names
            ).accuracy
        if self.on_epoch:
            self.on_epoch(row)
        return row

    def state_dict(self) -> dict[str, Any]:
        return {"order": self.order.state_dict(), "loss_sum": self.loss_sum, "n": self.n}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order.load_state_dict(state["order"])
        self.loss_sum, self.n = state["loss_sum"], state["n"]


def train_classifier(
    clf: SequenceClassifier,
    tokenizer,
    train: LabeledTexts,
    val: LabeledTexts | None = None,
    test: LabeledTexts | None = None,
    cfg: ClassifyConfig | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    callbacks: list[Callback] = (),
) -> ClassifyResult:
    """Train with the one training core (AdamW, warmup then linear decay, cross-entropy);
    evaluate val after each epoch and test at the end."""
    cfg = cfg or ClassifyConfig()
    torch.manual_seed(cfg.train.seed)
    if cfg.freeze:
        clf.freeze(cfg.train_blocks, cfg.train_norm)
    params = [p for p in clf.parameters() if p.requires_grad]
    if not params:
        raise InputError(
            "nothing to train: every parameter is frozen (train_blocks/train_norm, or PEFT)"
        )
    start = clf.frozen_layers() if cfg.cache_frozen else 0
    t0 = time.perf_counter()
    tr = _Examples(clf, train, tokenizer, cfg, start, "cache train")
    va = _Examples(clf, val, tokenizer, cfg, start, "cache val") if val is not None else None
    te = _Examples(clf, test, tokenizer, cfg, start, "cache test") if test is not None else None
    tcfg = cfg.train
    per_epoch = steps_per_epoch(len(tr), tcfg.batch_size * tcfg.grad_accum)
    over: dict[str, Any] = {"eval_interval": per_epoch} if tcfg.eval_interval == 0 else {}
    if tcfg.device == "auto":  # train where the model is (its cached features are there)
        over["device"] = str(next(clf.parameters()).device)
    if cfg.epochs > 0:
        over["max_steps"] = cfg.epochs * per_epoch
    if over:
        tcfg = tcfg.replace(**over)
    task = ClassifyTask(clf, tr, va, val.names if val is not None else None, cfg, on_epoch)
    history = Trainer(clf, tcfg, task, list(callbacks)).fit()
    clf.eval()
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
    epochs = [r for r in history if "train_loss" in r]
    return ClassifyResult(epochs, val_rep, test_rep, seconds, sum(p.numel() for p in params), start)
