"""Classification finetuning end to end: read a labeled file, split it, train, write a report folder.

Shared by the `lmlab finetune classify` command and the `spam-classification` recipe.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lmlab.config import ConfigError
from lmlab.eval.bootstrap import bootstrap_ci
from lmlab.finetune.classify import (
    ClassifyConfig,
    ClassifyResult,
    SequenceClassifier,
    train_classifier,
)
from lmlab.finetune.data import (
    LabeledTexts,
    balance,
    drop_duplicates,
    load_labeled,
    overlap,
    split,
)
from lmlab.finetune.metrics import plot_confusion
from lmlab.runs import RunDir


@dataclass
class DataSpec:
    """Where the examples come from and how they are split."""

    path: str
    text_column: str = "text"
    label_column: str = "label"
    columns: list[str] | None = None  # names of the columns of a file without a header row
    labels: list[str] | None = None  # class names in id order (default: sorted label strings)
    balanced: bool = True
    fractions: tuple[float, ...] = (0.7, 0.1, 0.2)
    per_class: int = 0  # > 0: keep at most this many examples per class (quick runs)
    seed: int = 123
    dedupe: bool = True  # drop exact-duplicate texts before balancing and splitting


def prepare_splits(spec: DataSpec) -> list[LabeledTexts]:
    """train/val/test (or as many parts as `fractions`) from the file, deduplicated and balanced
    when asked; with `dedupe` no text of a later part appears in an earlier one."""
    label_map = {n: i for i, n in enumerate(spec.labels)} if spec.labels else None
    data = load_labeled(
        spec.path,
        text_column=spec.text_column,
        label_column=spec.label_column,
        columns=spec.columns,
        label_map=label_map,
    )
    if spec.dedupe:
        data = drop_duplicates(data)
    if spec.balanced:
        data = balance(data, spec.seed)
    if spec.per_class > 0:
        data = _cap(data, spec.per_class)
    parts = split(data, tuple(spec.fractions), spec.seed)
    if spec.dedupe:
        for i, a in enumerate(parts):
            for b in parts[i + 1 :]:
                if overlap(a, b):
                    raise AssertionError("deduplicated splits share texts; this is a bug")
    return parts


def sms_spam_splits(
    name: str, per_class: int, seed: int, dedupe: bool = True
) -> list[LabeledTexts]:
    """Balanced 70/10/20 ham/spam splits of a label<TAB>text file in the data folder."""
    from lmlab.paths import data_dir

    path = data_dir() / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found; put {name} (label<TAB>text lines) into {data_dir()}"
        )
    spec = DataSpec(
        str(path),
        columns=["label", "text"],
        labels=["ham", "spam"],
        per_class=per_class,
        seed=seed,
        dedupe=dedupe,
    )
    return prepare_splits(spec)


def _cap(data: LabeledTexts, n: int) -> LabeledTexts:
    seen: dict[int, int] = {}
    keep = []
    for i, y in enumerate(data.labels):
        if seen.get(y, 0) < n:
            keep.append(i)
            seen[y] = seen.get(y, 0) + 1
    return data.subset(keep)


def classify_and_report(
    model,
    tokenizer,
    parts: list[LabeledTexts],
    cfg: ClassifyConfig,
    out: RunDir,
    title: str,
    pool: str = "last",
) -> tuple[dict, ClassifyResult]:
    """Train a classification head (and the chosen blocks) and write metrics, plots and report.md."""
    if tokenizer is None:
        raise ConfigError(
            "this model comes without a tokenizer; classification needs one to encode the texts"
        )
    if len(parts) < 2:
        raise ConfigError("need at least a train and a test part (fractions like 0.8,0.2)")
    train, *rest = parts
    val, test = (rest[0], rest[1]) if len(rest) >= 2 else (None, rest[0])
    torch.manual_seed(cfg.train.seed)  # the head's initialization
    clf = SequenceClassifier(model, len(train.names), pool=pool)
    t0 = time.perf_counter()
    res = train_classifier(clf, tokenizer, train, val, test, cfg)
    total = time.perf_counter() - t0
    plot_confusion(res.test, out.file("confusion.png"), f"test accuracy {res.test.accuracy:.2%}")
    _plot_history(res.history, out.file("training.png"))
    test_in_train = overlap(train, test)
    conf = res.test.confusion
    n_right = sum(conf[i][i] for i in range(len(conf)))
    correct = [1] * n_right + [0] * (sum(map(sum, conf)) - n_right)  # order does not matter
    acc_ci = bootstrap_ci(correct, seed=cfg.train.seed)
    metrics = {
        "test_accuracy": res.test.accuracy,
        "test_accuracy_ci95": list(acc_ci),
        "val_accuracy": res.val.accuracy if res.val else None,
        "test": res.test.as_dict(),
        "history": res.history,
        "seconds": total,
        "trainable_params": res.trainable_params,
        "cached_frozen_blocks": res.frozen_layers,
        "sizes": {"train": len(train), "val": len(val) if val else 0, "test": len(test)},
        "train_counts": train.counts(),
        "duplicates_removed": train.duplicates_removed,
        "test_texts_in_train": test_in_train,
    }
    val_line = f"{res.val.accuracy:.2%}" if res.val else "n/a"
    report = f"""# {title}

Train / val / test: {len(train)} / {len(val) if val else 0} / {len(test)} examples
(train classes {train.counts()}). Exact-duplicate texts removed before splitting:
{train.duplicates_removed}; test texts that also appear in train: {test_in_train}.
Nothing is chosen on the test split (the validation split is only reported per epoch).

| metric | value |
|---|---|
| test accuracy | **{res.test.accuracy:.2%}** (bootstrap 95% interval {acc_ci[0]:.2%} - {acc_ci[1]:.2%}) |
| val accuracy | {val_line} |
| wall time (caching + training + eval) | {total:.0f} s |
| trainable parameters | {res.trainable_params:,} |
| frozen blocks cached once | {res.frozen_layers} |

Per class on the test split:

{res.test.markdown()}

![confusion matrix](confusion.png)

![training](training.png)
"""
    out.write_report(report)
    return metrics, res


def _plot_history(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy")
    if any("val_accuracy" in h for h in history):
        ax2 = ax.twinx()
        ax2.plot(
            epochs,
            [h.get("val_accuracy") for h in history],
            "s--",
            color="C1",
            label="val accuracy",
        )
        ax2.set_ylabel("val accuracy")
        ax2.legend(loc="center right")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
