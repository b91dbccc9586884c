"""PEFT methods side by side on one classification task: trainable parameters (checked against the
closed-form count of each method), accuracy, wall time and peak memory, in one table."""

from __future__ import annotations

import multiprocessing
from dataclasses import asdict, dataclass, field

from lmlab.config import ConfigError
from lmlab.finetune.classify import ClassifyConfig, SequenceClassifier, train_classifier
from lmlab.finetune.data import LabeledTexts
from lmlab.finetune.memory import PeakMemory
from lmlab.finetune.pipeline import sms_spam_splits
from lmlab.runs import RunDir
from lmlab.train import TrainConfig
from lmlab.train.logging import log_run

SUMMARY = "LoRA, prompt/prefix tuning, Houlsby/Pfeiffer adapters, last block on SMS spam: params vs formula, acc, time, memory"

METHODS = ("last_block", "lora", "prompt", "prefix", "houlsby", "pfeiffer")
PROMPT_INIT = "Is this SMS message spam or ham?"


def default_train() -> TrainConfig:
    """Classification's training defaults at batch 16, seed 123, one thread (a 2nd thread spins
    on a shared 2-core CPU, ~3x slower); each method replaces `lr` with its own `lr_*`."""
    return ClassifyConfig().train.replace(batch_size=16, seed=123, threads=1)


@dataclass
class Config:
    train: TrainConfig = field(default_factory=default_train)  # batch_size, seed, threads, ...
    model: str = "smollm2-135m-instruct"
    data: str = "sms_spam_collection.tsv"  # in data_dir(): label<TAB>text lines
    n_layers: int = 6  # keep the first n blocks (CPU budget); 0 = all
    per_class: int = 150  # messages per class before the 70/10/20 split; 0 = all 747
    max_len: int = 48
    epochs: int = 3
    methods: str = ",".join(METHODS)
    lora_r: int = 8
    lora_targets: str = "attn.q,attn.v"
    n_virtual: int = 10
    n_prefix: int = 10
    reduction_factor: int = 16
    lr_last_block: float = 1e-4
    lr_lora: float = 2e-3
    lr_prompt: float = 3e-2
    lr_prefix: float = 1e-2
    lr_adapter: float = 2e-3
    head_lr: float = 1e-3
    isolate: bool = True  # one process per method: independent peak-memory numbers


def linear_shape(cfg, target: str) -> tuple[int, int]:
    """(in, out) of a block's Linear named by its short name, from the config alone."""
    d, q, kv, f = cfg.d_model, cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim, cfg.d_ff
    shapes = {
        "attn.q": (d, q),
        "attn.k": (d, kv),
        "attn.v": (d, kv),
        "attn.o": (q, d),
        "mlp.up": (d, f),
        "mlp.gate": (d, f),
        "mlp.down": (f, d),
    }
    if target not in shapes:
        raise ConfigError(f"lora_targets: {target!r} is not one of {sorted(shapes)}")
    return shapes[target]


def expected_params(method: str, cfg: Config, mcfg, n_classes: int) -> tuple[int, str]:
    """Closed-form trainable parameter count of `method` (head included) and the formula in words."""
    from lmlab.peft.report import (
        adapter_params,
        block_params,
        head_params,
        lora_params,
        norm_params,
        prefix_params,
        prompt_params,
    )

    d, L = mcfg.d_model, mcfg.n_layers
    head = head_params(d, n_classes)
    if method == "last_block":
        return block_params(mcfg) + norm_params(mcfg) + head, "block + final norm + head"
    if method == "lora":
        targets = cfg.lora_targets.split(",")
        shapes = [linear_shape(mcfg, t) for t in targets] * L
        return lora_params(
            shapes, cfg.lora_r
        ) + head, f"L * r * sum(in + out) over {targets} + head"
    if method == "prompt":
        return prompt_params(cfg.n_virtual, d) + head, "n_virtual * d + head"
    if method == "prefix":
        return prefix_params(
            cfg.n_prefix, L, mcfg.n_kv_heads, mcfg.head_dim
        ) + head, "2 * L * kv_heads * P * head_dim + head"
    n = {"houlsby": 2, "pfeiffer": 1}[method] * L
    return adapter_params(
        d, cfg.reduction_factor, n
    ) + head, f"{n} * (2 d m + m + d), m = d/{cfg.reduction_factor}, + head"


def _attach(method: str, cfg: Config, model, tok) -> tuple[float, bool]:
    """Put the method on the model; returns (learning rate, whether the classifier freezes blocks itself)."""
    from lmlab.peft import apply_adapters, apply_lora, apply_prefix_tuning, apply_prompt_tuning

    if method == "last_block":
        return cfg.lr_last_block, True
    if method == "lora":
        apply_lora(
            model, r=cfg.lora_r, alpha=2.0 * cfg.lora_r, target_modules=cfg.lora_targets.split(",")
        )
        return cfg.lr_lora, False
    if method == "prompt":
        apply_prompt_tuning(
            model, cfg.n_virtual, init="text", text=PROMPT_INIT, tokenizer=tok, seed=cfg.train.seed
        )
        return cfg.lr_prompt, False
    if method == "prefix":
        apply_prefix_tuning(model, cfg.n_prefix)
        return cfg.lr_prefix, False
    apply_adapters(model, cfg.reduction_factor, placement=method)
    return cfg.lr_adapter, False


def run_method(method: str, cfg: Config, parts: list[LabeledTexts]) -> dict:
    """Load the model, attach one method, train and evaluate; the numbers of one table row."""
    import torch

    from lmlab.finetune.truncate import keep_blocks
    from lmlab.peft.report import trainable_report
    from lmlab.recipes.spam_classification import load_pretrained

    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)
    model, tok = load_pretrained(cfg.model)
    if cfg.n_layers:
        keep_blocks(model, cfg.n_layers)
    with PeakMemory() as mem:
        lr, freeze = _attach(method, cfg, model, tok)
        clf = SequenceClassifier(model, len(parts[0].names))
        if freeze:
            clf.freeze(train_blocks=1, train_norm=True)
        trainable = trainable_report(clf).trainable
        want, formula = expected_params(method, cfg, model.cfg, len(parts[0].names))
        ccfg = ClassifyConfig(
            cfg.train.replace(lr=lr),
            epochs=cfg.epochs,
            max_len=cfg.max_len,
            head_lr=cfg.head_lr,
            freeze=False,
        )
        res = train_classifier(clf, tok, parts[0], parts[1], parts[2], ccfg)
    return {
        "method": method,
        "trainable": trainable,
        "formula": want,
        "formula_text": formula,
        "matches": trainable == want,
        "percent": 100.0 * trainable / sum(p.numel() for p in clf.parameters()),
        "val_accuracy": res.val.accuracy,
        "test_accuracy": res.test.accuracy,
        "seconds": res.train_seconds,
        "peak_mb": mem.peak_mb,
        "extra_mb": mem.extra_mb,
        "exact_memory": mem.exact,
        "lr": lr,
        "history": res.history,
    }


def run(cfg: Config, out: RunDir) -> dict:
    methods = [m.strip() for m in cfg.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ConfigError(f"methods: {bad or methods} not known; choose from {', '.join(METHODS)}")
    parts = sms_spam_splits(cfg.data, cfg.per_class, cfg.train.seed)
    rows = []
    for method in methods:
        print(f"peft-comparison: {method}")
        if cfg.isolate:
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                row = pool.apply(run_method, (method, cfg, parts))
        else:
            row = run_method(method, cfg, parts)
        rows.append(row)
        print(
            f"  trainable {row['trainable']:,} (formula {row['formula']:,}) test acc {row['test_accuracy']:.2%} "
            f"{row['seconds']:.0f} s peak {row['peak_mb']:.0f} MB"
        )
    _plot(rows, out)
    out.write_report(_report(cfg, rows, parts))
    metrics = {
        "config": asdict(cfg),
        "rows": rows,
        "all_counts_match": all(r["matches"] for r in rows),
    }
    log_run(out.path, metrics, {r["method"]: r["history"] for r in rows})
    return metrics


def table(rows: list[dict]) -> str:
    """The comparison as a markdown table."""
    lines = [
        "| method | trainable params | closed form | match | % of model | test acc | val acc | time (s) "
        "| peak RSS (MB) | + over start (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['trainable']:,} | {r['formula']:,} | {'yes' if r['matches'] else 'NO'} "
            f"| {r['percent']:.3f} | {r['test_accuracy']:.2%} | {r['val_accuracy']:.2%} | {r['seconds']:.0f} "
            f"| {r['peak_mb']:.0f} | {r['extra_mb']:.0f} |"
        )
    return "\n".join(lines)


def _report(cfg: Config, rows: list[dict], parts: list[LabeledTexts]) -> str:
    formulas = "\n".join(f"- {r['method']}: {r['formula_text']} = {r['formula']:,}" for r in rows)
    depth = f"the first {cfg.n_layers} blocks of" if cfg.n_layers else ""
    return f"""# PEFT comparison

Task: SMS spam vs ham, balanced, {len(parts[0])} / {len(parts[1])} / {len(parts[2])} train / val / test
messages; backbone: {depth} {cfg.model}; head on the last token; {cfg.epochs} epochs, batch {cfg.train.batch_size}.
Every method also trains the 2-class head.

{table(rows)}

Closed-form counts:

{formulas}

Peak RSS is measured per method ({"one process each" if cfg.isolate else "in one process"}, high-water
mark reset before the method is attached); "+ over start" is what training added over the loaded model.

![accuracy vs trainable parameters](comparison.png)
"""


def _plot(rows: list[dict], out: RunDir) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.scatter(r["trainable"], r["test_accuracy"], s=20 + r["seconds"] / 2)
        ax.annotate(
            r["method"],
            (r["trainable"], r["test_accuracy"]),
            textcoords="offset points",
            xytext=(5, 5),
        )
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log)")
    ax.set_ylabel("test accuracy")
    ax.set_title("PEFT methods (marker size ~ wall time)")
    fig.tight_layout()
    fig.savefig(out.file("comparison.png"), dpi=120)
    plt.close(fig)
