"""GRPO on SmolLM2-135M-Instruct with folk riddles: reasoning then <answer>, held-out riddles scored."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from lmlab.eval.bootstrap import bootstrap_ci, format_ci
from lmlab.rl import GRPOConfig, GRPOTrainer
from lmlab.rl.config import grpo_train_config
from lmlab.rl.plots import plot_rewards
from lmlab.rl.rewards import extract_answer, normalize
from lmlab.rl.tasks import RiddleTask
from lmlab.runs import RunDir
from lmlab.train import TrainConfig
from lmlab.train.logging import log_run

SUMMARY = (
    "GRPO on folk riddles: SmolLM2-135M learns the reasoning-then-<answer> format, not riddles"
)


def default_train() -> TrainConfig:
    """GRPO's training defaults with lr 3e-5, up to 300 steps (the time limit stops it first), one
    thread (the fastest on a shared CPU)."""
    return grpo_train_config(lr=3e-5, max_steps=300, threads=1, seed=0)


@dataclass
class Config:
    train: TrainConfig = field(default_factory=default_train)  # lr, max_steps, threads, seed, ...
    model: str = "smollm2-135m-instruct"
    data: str = ""  # a riddle JSONL ({"riddle", "answer", "aliases"}); empty: the shipped sample
    test_fraction: float = 0.25  # held out by answer group (fixed by train.seed)
    shot: bool = True  # one solved riddle (not in the set) before each riddle
    max_minutes: float = 12.0  # training stops at train.max_steps or after this much wall time
    num_generations: int = 6
    prompts_per_step: int = 4
    max_new_tokens: int = 48  # also the evaluation budget: a reply cut off scores 0 on both
    temperature: float = 0.8
    trainable: str = "last:6"  # only the top blocks train: a CPU-sized backward pass
    loss_type: str = "dapo"
    beta: float = 0.0
    eval_train: bool = True  # also score the training riddles (does it memorize what it saw?)


def scores(task: Any, ev: dict[str, Any]) -> dict[str, np.ndarray]:
    """Per-riddle reward of every reward function, recomputed from an evaluation's completions."""
    s = ev["samples"]
    cols = {"answer": [x["answer"] for x in s], "aliases": [x["aliases"] for x in s]}
    prompts, texts = [x["prompt"] for x in s], [x["completion"] for x in s]
    return {f.__name__: np.array(f(prompts, texts, **cols)) for f in task.reward_funcs}


def copies_shot(task: Any, completions: list[str]) -> float:
    """Fraction of replies whose answer is the demonstration's answer (0 without a demonstration)."""
    if not task.shots:
        return 0.0
    shot = normalize(extract_answer(task.shots[0][1]) or "")
    return sum(normalize(extract_answer(c) or "") == shot for c in completions) / len(completions)


def evaluate(trainer: GRPOTrainer, rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Greedy replies to `rows`, each scored by every reward function."""
    ev = trainer.evaluate(rows, n_samples=len(rows))
    for x, r in zip(ev["samples"], rows, strict=True):
        x["aliases"] = r["aliases"]
    return {**scores(trainer.task, ev), "completions": [x["completion"] for x in ev["samples"]]}


def run(cfg: Config, out: RunDir) -> dict:
    import lmlab

    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)
    t0 = time.perf_counter()  # the budget counts everything: load, evaluations, training
    model, tok = lmlab.load(cfg.model)
    model = model.float()
    task = RiddleTask(cfg.data or None, cfg.test_fraction, cfg.train.seed, cfg.shot)
    gcfg = GRPOConfig(
        num_generations=cfg.num_generations, prompts_per_step=cfg.prompts_per_step,
        micro_batch_size=cfg.num_generations * cfg.prompts_per_step,
        max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
        trainable=cfg.trainable, max_minutes=cfg.max_minutes, loss_type=cfg.loss_type,
        beta=cfg.beta, eval_size=len(task.test), eval_batch_size=64,
        train=replace(cfg.train, out_dir=str(out.path / "grpo")),
    )  # fmt: skip
    trainer = GRPOTrainer(model, tok, gcfg, task)
    sets = {"test": task.test, **({"train": task.train} if cfg.eval_train else {})}
    before = {k: evaluate(trainer, rows) for k, rows in sets.items()}
    t1 = time.perf_counter()
    history = trainer.fit()
    t2 = time.perf_counter()
    after = {k: evaluate(trainer, rows) for k, rows in sets.items()}
    total = time.perf_counter() - t0
    plot_rewards(history, out.file("rewards.png"), title=f"GRPO on {cfg.model}: riddles")

    acc, fmt = task.correctness, "reasoning_format_reward"
    metrics: dict[str, Any] = {"n_train": len(task.train), "n_test": len(task.test),
                               "steps": len(history), "minutes": total / 60,
                               "train_seconds": t2 - t1}  # fmt: skip
    rows = []
    for split in sets:
        for key, name in ((acc, "accuracy"), (fmt, "format")):
            b, a = before[split][key], after[split][key]
            ci_b, ci_a, ci_d = bootstrap_ci(b), bootstrap_ci(a), bootstrap_ci(a - b)
            metrics |= {f"{split}_{name}_before": float(b.mean()), f"{split}_{name}_after":
                        float(a.mean()), f"{split}_{name}_gain_ci": list(ci_d),
                        f"{split}_{name}_before_ci": list(ci_b),
                        f"{split}_{name}_after_ci": list(ci_a)}  # fmt: skip
            rows.append(f"| {split} | {name} | {format_ci(b.mean(), ci_b)} | "
                        f"{format_ci(a.mean(), ci_a)} | {format_ci((a - b).mean(), ci_d)} |")  # fmt: skip
    for when, ev in (("before", before), ("after", after)):
        metrics[f"test_full_format_{when}"] = float((ev["test"][fmt] == 1.0).mean())
        metrics[f"test_copies_shot_{when}"] = copies_shot(task, ev["test"]["completions"])
    print(f"held-out accuracy {metrics['test_accuracy_before']:.3f} -> "
          f"{metrics['test_accuracy_after']:.3f}, format {metrics['test_format_before']:.3f} -> "
          f"{metrics['test_format_after']:.3f}; {len(history)} steps, {total / 60:.1f} min in all")  # fmt: skip

    def examples(ev: dict[str, Any], n: int = 6) -> str:
        return "\n".join(
            f"- {r['prompt']} (answer {r['answer']}): `{c!r}`"
            for r, c in zip(task.test[:n], ev["completions"][:n], strict=False)
        )

    gain_lo = metrics["test_accuracy_gain_ci"][0]
    verdict = (
        "The held-out accuracy interval of the gain excludes zero."
        if gain_lo > 0
        else "The interval of the held-out accuracy gain includes zero (or lies below it): "
        "no measurable gain in riddle solving."
    )
    out.write_report(f"""# grpo-riddles

{cfg.model}, GRPO for {len(history)} steps ({(t2 - t1) / 60:.1f} min, limit {cfg.max_minutes} min):
{cfg.prompts_per_step} riddles x {cfg.num_generations} samples at temperature {cfg.temperature},
{cfg.max_new_tokens} new tokens, trainable {cfg.trainable}, lr {cfg.train.lr}, loss `{cfg.loss_type}`,
beta {cfg.beta}. Data: {cfg.data or "the shipped sample (traditional public-domain folk riddles)"};
{len(task.train)} train / {len(task.test)} held-out riddles, split by answer group (no held-out
answer or alias appears among the training riddles). {"One solved riddle outside the set is shown first." if cfg.shot else "No demonstration."}

Rewards: answer (1.0: the `<answer>` text equals the answer or an alias after lowercasing and
dropping punctuation and articles) + 0.5 x format (1.0: at least 3 words of reasoning, then one
`<answer>` of at most 5 words ending the reply; 0.5: a closed answer block ending the reply
without that shape; 0 otherwise). Greedy evaluation with the same {cfg.max_new_tokens}-token budget.
Intervals: 95% bootstrap over riddles (gain: over per-riddle differences).

| set | reward | before | after | gain |
|---|---|---|---|---|
{chr(10).join(rows)}

Full format (score 1.0) on held-out: {metrics["test_full_format_before"]:.3f} ->
{metrics["test_full_format_after"]:.3f}. Held-out replies whose answer is the demonstration's own
answer: {metrics["test_copies_shot_before"]:.3f} -> {metrics["test_copies_shot_after"]:.3f} (a small
policy leans on the example it was shown; with no answer signal nothing pulls it away).

{verdict}

What a 135M model can learn here: the reply shape (brief reasoning, a short answer in the tag) is
a behaviour GRPO can reinforce from the format reward. Riddle answers are world knowledge and
lateral association: with ~{len(task.train)} training riddles and a few minutes of CPU training the
answer reward is rare in rollouts (often all samples of a riddle score 0, so that group gives no
gradient), and what is learned on training riddles does not transfer to riddles with other answers.
Treat any held-out accuracy change as within noise unless its interval excludes zero.

Time: load + first evaluation {t1 - t0:.0f} s, training {t2 - t1:.0f} s, total {total / 60:.1f} min.

Held-out, before:
{examples(before["test"])}

Held-out, after:
{examples(after["test"])}

![rewards](rewards.png)
""")
    log_run(out.path, metrics, {"grpo": history})
    return metrics
