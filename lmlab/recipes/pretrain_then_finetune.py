"""Pretrain a char GPT on SMS messages, finetune it on Shakespeare; compare with Shakespeare alone."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from lmlab.data.shakespeare import shakespeare_text
from lmlab.data.text import prepare_text
from lmlab.data.tokens import TokenData
from lmlab.paths import data_dir
from lmlab.recipes import shakespeare_char
from lmlab.runs import RunDir
from lmlab.tokenizers import CharTokenizer
from lmlab.train import TrainConfig
from lmlab.train.logging import log_run
from lmlab.train.plots import plot_runs

SUMMARY = "pretrain on a local SMS corpus, finetune on Shakespeare: beats from-scratch at the same finetune budget"


def default_train() -> TrainConfig:
    """The pretraining settings; finetuning and the from-scratch baseline reuse them."""
    return TrainConfig(
        model="gpt2-tiny",
        model_overrides=dict(d_model=128, n_layers=4, n_heads=4),
        block_size=64,
        batch_size=32,
        max_steps=600,
        lr=3e-3,
        min_lr=3e-4,
        warmup_steps=60,
        eval_interval=50,
        eval_iters=10,
        tensorboard=False,
    )


@dataclass
class Config:
    train: TrainConfig = field(default_factory=default_train)  # the SMS pretraining
    pretrain_corpus: str = "sms_spam_collection.tsv"  # in data_dir(): label<TAB>text lines
    finetune_max_steps: int = 300  # both Shakespeare runs (finetune and from scratch)
    finetune_lr: float = 1e-3  # the finetune (from scratch uses train.lr); min_lr is lr / 10


def _sms_text(name: str) -> str:
    path = data_dir() / name
    if not path.is_file():
        raise FileNotFoundError(
            f"pretraining corpus {path} not found; put {name} into {data_dir()} "
            "(set LMLAB_DATA) or pass --pretrain_corpus=OTHER_FILE"
        )
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(line.split("\t", 1)[-1] for line in lines) + "\n"


def run(cfg: Config, out: RunDir) -> dict:
    sms, shakes = _sms_text(cfg.pretrain_corpus), shakespeare_text()
    vocab = CharTokenizer(sorted(set(sms) | set(shakes)))  # one vocabulary covers both corpora
    sms_dir = prepare_text(sms, vocab, out.path / "data_sms", 0.05, tokenizer_name="char")
    sh_dir = prepare_text(shakes, vocab, out.path / "data_shakespeare", 0.1, tokenizer_name="char")
    tc = cfg.train
    sms_data, sh_data = TokenData(sms_dir, tc.block_size), TokenData(sh_dir, tc.block_size)
    steps = cfg.finetune_max_steps
    shakes_cfg = replace(tc, max_steps=steps, warmup_steps=min(tc.warmup_steps, steps // 10))
    fine_cfg = replace(shakes_cfg, lr=cfg.finetune_lr, min_lr=cfg.finetune_lr / 10)

    t0 = time.perf_counter()
    pre, pre_hist = shakespeare_char.train(
        tc, str(out.path / "pretrain"), sms_data, vocab.vocab_size
    )
    _, fine_hist = shakespeare_char.train(
        fine_cfg, str(out.path / "finetune"), sh_data, vocab.vocab_size, init=pre.state_dict()
    )
    _, scratch_hist = shakespeare_char.train(
        shakes_cfg, str(out.path / "scratch"), sh_data, vocab.vocab_size
    )
    seconds = time.perf_counter() - t0
    plot_runs(
        {
            "pretrained on SMS, then Shakespeare": fine_hist,
            "Shakespeare from scratch": scratch_hist,
        },
        out.file("val_loss.png"),
        title=f"Shakespeare val loss, {cfg.finetune_max_steps} steps",
    )
    ft = [r for r in fine_hist if "val_loss" in r]
    sc = [r for r in scratch_hist if "val_loss" in r]
    pre_val = [r for r in pre_hist if "val_loss" in r][-1]["val_loss"]
    rows = "\n".join(
        f"| {a['step']} | {a['val_loss']:.4f} | {b['val_loss']:.4f} |"
        for a, b in zip(ft, sc, strict=True)
    )
    verdict = "below" if ft[-1]["val_loss"] < sc[-1]["val_loss"] else "NOT below"
    print(
        f"Shakespeare val loss after {cfg.finetune_max_steps} steps: finetuned {ft[-1]['val_loss']:.4f}, "
        f"from scratch {sc[-1]['val_loss']:.4f} ({verdict})"
    )
    out.write_report(f"""# pretrain-then-finetune

Pretraining corpus: the {len(sms):,} characters of SMS message text in `{cfg.pretrain_corpus}` (labels
dropped), a local corpus of short informal English unlike Shakespeare's verse. One character vocabulary
({vocab.vocab_size} symbols) covers both corpora. Model: {pre.cfg.n_layers} layers, d_model {pre.cfg.d_model},
block {tc.block_size}, batch {tc.batch_size}.

1. pretrain on SMS for {tc.max_steps} steps (lr {tc.lr}); SMS val loss {pre_val:.4f}
2. finetune that model on Shakespeare for {cfg.finetune_max_steps} steps (lr {cfg.finetune_lr}, fresh optimizer)
3. train the same model from scratch on Shakespeare for the same {cfg.finetune_max_steps} steps (lr {tc.lr})

The finetuned model's Shakespeare val loss is **{verdict}** the from-scratch model's at the same budget:
{ft[-1]["val_loss"]:.4f} vs {sc[-1]["val_loss"]:.4f}.

| step | finetuned | from scratch |
|---|---|---|
{rows}

![val loss](val_loss.png)

Total time {seconds:.0f} s.
""")
    metrics = {
        "finetuned_val_loss": ft[-1]["val_loss"],
        "scratch_val_loss": sc[-1]["val_loss"],
        "pretrain_val_loss": pre_val,
        "vocab_size": vocab.vocab_size,
        "seconds": seconds,
    }
    log_run(
        out.path, metrics, {"pretrain": pre_hist, "finetune": fine_hist, "scratch": scratch_hist}
    )
    return metrics
