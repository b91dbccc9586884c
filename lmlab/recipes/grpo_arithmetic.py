"""GRPO on SmolLM2-135M-Instruct: arithmetic word problems, answers in <answer> tags, CPU-sized."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import torch

from lmlab.rl import GRPOConfig, GRPOTrainer
from lmlab.rl.config import grpo_train_config
from lmlab.rl.plots import plot_rewards
from lmlab.rl.tasks import ArithmeticTask
from lmlab.runs import RunDir
from lmlab.train import TrainConfig
from lmlab.train.logging import log_run

SUMMARY = "GRPO teaches SmolLM2-135M-Instruct the <answer> format and lifts word-problem accuracy"


def default_train() -> TrainConfig:
    """GRPO's training defaults with lr 3e-5 for up to 300 steps on one thread (the fastest on a
    shared CPU: more oversubscribe)."""
    return grpo_train_config(lr=3e-5, max_steps=300, threads=1, seed=0)


@dataclass
class Config:
    train: TrainConfig = field(default_factory=default_train)  # lr, max_steps, threads, seed, ...
    model: str = "smollm2-135m-instruct"
    max_minutes: float = 25.0  # training stops at train.max_steps or after this much wall time
    num_generations: int = 6
    prompts_per_step: int = 4
    max_new_tokens: int = 24
    temperature: float = 0.8
    trainable: str = "last:6"  # only the top blocks train: a CPU-sized backward pass
    loss_type: str = "dapo"
    beta: float = 0.0
    eval_size: int = 200


def run(cfg: Config, out: RunDir) -> dict:
    import lmlab

    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)
    t0 = time.perf_counter()  # the budget counts everything: load, both evaluations, training
    model, tok = lmlab.load(cfg.model)
    model = model.float()
    task = ArithmeticTask(n_test=cfg.eval_size)
    gcfg = GRPOConfig(
        num_generations=cfg.num_generations, prompts_per_step=cfg.prompts_per_step,
        micro_batch_size=cfg.num_generations * cfg.prompts_per_step,
        max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
        trainable=cfg.trainable, max_minutes=cfg.max_minutes,
        loss_type=cfg.loss_type, beta=cfg.beta, eval_size=cfg.eval_size,
        train=replace(cfg.train, out_dir=str(out.path / "grpo")),
    )  # fmt: skip
    trainer = GRPOTrainer(model, tok, gcfg, task)
    before = trainer.evaluate(n_samples=6)
    t1 = time.perf_counter()
    history = trainer.fit()
    t2 = time.perf_counter()
    after = trainer.evaluate(n_samples=6)
    total = time.perf_counter() - t0
    plot_rewards(history, out.file("rewards.png"), title=f"GRPO on {cfg.model}: arithmetic")
    c, f = task.correctness, "format_reward"
    gain = after[c] - before[c]
    print(f"held-out correctness {before[c]:.3f} -> {after[c]:.3f} ({gain:+.3f}), format "
          f"{before[f]:.3f} -> {after[f]:.3f}; {total / 60:.1f} min in all")  # fmt: skip

    def samples(ev: dict) -> str:
        return "\n".join(
            f"- {s['prompt']} (answer {s['answer']}): `{s['completion']!r}`" for s in ev["samples"]
        )

    out.write_report(f"""# grpo-arithmetic

{cfg.model}, GRPO for {len(history)} steps: {cfg.prompts_per_step} prompts x {cfg.num_generations} samples
at temperature {cfg.temperature}, {cfg.max_new_tokens} new tokens, trainable {cfg.trainable}, lr {cfg.train.lr},
loss `{cfg.loss_type}`, beta {cfg.beta}. Rewards: correctness (1.0) + format (0.5).
Greedy evaluation on {cfg.eval_size} held-out problems with the same {cfg.max_new_tokens}-token budget (a
reply cut off before `</answer>` scores 0 on both rewards).

| | correctness | format |
|---|---|---|
| before | {before[c]:.3f} | {before[f]:.3f} |
| after | {after[c]:.3f} | {after[f]:.3f} |

Correctness gain: **{gain:+.3f}**. Time: load + eval {t1 - t0:.0f} s, training {t2 - t1:.0f} s,
total {total / 60:.1f} min.

Before:
{samples(before)}

After:
{samples(after)}

![rewards](rewards.png)
""")
    metrics = {"correctness_before": before[c], "correctness_after": after[c], "gain": gain,
            "format_before": before[f], "format_after": after[f], "minutes": total / 60,
            "train_seconds": t2 - t1}  # fmt: skip
    log_run(out.path, metrics, {"grpo": history})
    return metrics
