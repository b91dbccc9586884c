"""ITI on TruthfulQA: per-head truth probes on QA pairs, two-fold cross-validation by question.

Each (question, answer) pair is the text `Q: {question}\\nA: {answer}`; a head's activation is its
output z at the answer's last token, labelled true / false. One unsteered forward per pair gives
both the baseline answer log-probability (summed over the answer's tokens) and the activations.
For each fold: probes are fitted on the training fold minus a validation part (whole questions),
the probe accuracy on that validation part ranks the heads, and (K, alpha) is chosen by mean MC2
on validation questions; the held-out fold is then scored once with that setting. Pooling both
folds evaluates every question once, steered by directions fitted without it.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from lmlab.data.truthfulqa import TQAQuestion, question_folds, read_truthfulqa
from lmlab.errors import InputError
from lmlab.eval.bootstrap import bootstrap_ci
from lmlab.eval.mc import mc_score, mc_table
from lmlab.interp.models import load_model
from lmlab.paths import data_dir
from lmlab.runs import RunDir
from lmlab.steer import iti
from lmlab.train.logging import log_run

SUMMARY = "ITI on TruthfulQA: per-head probes, 2-fold CV by question, held-out MC1/MC2 and cost"

METRICS = ("mc1", "mc1_best", "mc2")


@dataclass
class Config:
    model: str = "smollm2-135m-instruct"
    data: str = ""  # TruthfulQA.csv; empty = the shared data folder (lmlab.paths.data_dir())
    n_questions: int = 0  # 0 = all 813; else a seeded random subset (reduced runs)
    # answers kept per question (0 = all); 2 + 2 takes ~9 CPU-minutes, all answers ~2x that
    max_correct: int = 2  # correct answers, the best answer first
    max_incorrect: int = 2  # incorrect answers, in file order
    val_frac: float = 0.2  # of each training fold: questions that rank heads and choose (K, alpha)
    grid_questions: int = 30  # validation questions scored for every (K, alpha) of the grid
    ks: list[int] = field(default_factory=lambda: [16, 48])
    alphas: list[float] = field(default_factory=lambda: [5.0, 15.0])
    probe_steps: int = 200
    ppl_tokens: int = 256
    # a setting may raise perplexity (ppl_tokens of tinyshakespeare) at most this much; 0 = no cap
    max_ppl_ratio: float = 2.0
    batch_size: int = 16
    seed: int = 0
    threads: int = 1  # one thread wastes less on a shared, oversubscribed CPU


@dataclass
class Pairs:
    """Every kept (question, answer) pair, flattened: token ids, label, and owning question."""

    prompts: list[list[int]]
    answers: list[list[int]]
    labels: torch.Tensor  # [N] 1 = correct answer
    question: np.ndarray  # [N] index of the question each pair belongs to

    def rows(self, questions: list[int]) -> list[int]:
        """Pair indices of the given questions."""
        return np.flatnonzero(np.isin(self.question, questions)).tolist()


def prompt_text(question: str) -> str:
    """The text before the answer: `Q: {question}\\nA:`."""
    return f"Q: {question}\nA:"


def build_pairs(tok, questions: list[TQAQuestion], max_correct: int, max_incorrect: int) -> Pairs:
    """Tokenized pairs: prompt ids and answer ids (` {answer}`) encoded apart, so each answer's
    tokens are exactly the ones scored; correct answers come first within a question."""
    prompts, answers, labels, owner = [], [], [], []
    for q_i, q in enumerate(questions):
        p = tok.encode(prompt_text(q.question))
        correct = q.correct[:max_correct] if max_correct else q.correct
        incorrect = q.incorrect[:max_incorrect] if max_incorrect else q.incorrect
        for label, group in ((1, correct), (0, incorrect)):
            for a in group:
                prompts.append(p)
                answers.append(tok.encode(" " + a))
                labels.append(label)
                owner.append(q_i)
    return Pairs(prompts, answers, torch.tensor(labels), np.array(owner))


def question_scores(pairs: Pairs, lps: torch.Tensor, questions: list[int]) -> dict[str, np.ndarray]:
    """Per-question MC1, MC1-best and MC2 arrays (in `questions` order) from per-pair log-probs
    `lps`, which hold the scored pairs of these questions in `pairs.rows(questions)` order."""
    rows = pairs.rows(questions)
    lp = dict(zip(rows, lps.tolist(), strict=True))
    own: dict[int, tuple[list[float], list[float]]] = {q: ([], []) for q in questions}
    for r in rows:  # correct answers come first, so the best answer is index 0 of its list
        own[int(pairs.question[r])][0 if pairs.labels[r] == 1 else 1].append(lp[r])
    return mc_table([mc_score(*own[q], best=0) for q in questions])


def score(model, pairs: Pairs, questions: list[int], batch_size: int) -> torch.Tensor:
    """Answer log-probs of the pairs of `questions` (in `pairs.rows` order)."""
    rows = pairs.rows(questions)
    lps, _ = iti.answer_logprobs(
        model, [pairs.prompts[r] for r in rows], [pairs.answers[r] for r in rows],
        batch_size=batch_size,
    )  # fmt: skip
    return lps


def validation_split(train_q: list[int], val_frac: float, seed: int) -> tuple[list[int], list[int]]:
    """(validation, fit) questions of a training fold: a seeded random `val_frac` of them (the
    file is sorted by category, so the first ones would all share a few categories)."""
    shuffled = list(train_q)
    random.Random(seed).shuffle(shuffled)
    n_val = max(1, round(len(shuffled) * val_frac))
    if n_val >= len(shuffled):
        raise InputError(
            f"val_frac={val_frac} leaves no fitting questions out of {len(shuffled)}; lower it"
        )
    return shuffled[:n_val], shuffled[n_val:]


def choose_setting(grid: list[dict], max_ppl: float = 0.0) -> dict:
    """The grid row with the highest validation MC2 (ties: smaller alpha, then smaller K) among
    those whose perplexity is at most `max_ppl` (0: all); the unsteered row (first) always is."""
    allowed = [grid[0]] + [g for g in grid[1:] if max_ppl <= 0 or g["ppl"] <= max_ppl]
    return max(allowed, key=lambda g: (g["mc2"], -g["alpha"], -g["k"]))


def _ci_row(values: np.ndarray, seed: int) -> dict:
    lo, hi = bootstrap_ci(values, seed=seed)
    return {"mean": round(float(values.mean()), 4), "ci95": [round(lo, 4), round(hi, 4)]}


def run(cfg: Config, out: RunDir) -> dict:
    """Two-fold cross-validated ITI on TruthfulQA; writes report.md, metrics and plots."""
    t0, c0 = time.time(), time.process_time()

    def log(msg: str) -> None:
        print(f"[iti-truthfulqa {time.time() - t0:6.0f}s] {msg}", flush=True)

    torch.set_num_threads(cfg.threads)
    if not 0 < cfg.val_frac < 1 or cfg.grid_questions < 1:
        raise InputError(
            f"val_frac={cfg.val_frac}, grid_questions={cfg.grid_questions}; need 0 < val_frac < 1 "
            "and grid_questions >= 1"
        )
    questions = read_truthfulqa(cfg.data or None)
    if cfg.n_questions:
        keep = sorted(random.Random(cfg.seed).sample(range(len(questions)), cfg.n_questions))
        questions = [questions[i] for i in keep]
    model, tok = load_model(cfg.model)
    pairs = build_pairs(tok, questions, cfg.max_correct, cfg.max_incorrect)
    n_q, n_pairs = len(questions), len(pairs.prompts)
    n_tokens = sum(len(p) + len(a) for p, a in zip(pairs.prompts, pairs.answers, strict=True))
    log(f"{n_q} questions, {n_pairs} QA pairs, {n_tokens} tokens per scoring pass")

    base_lp, acts = iti.answer_logprobs(
        model, pairs.prompts, pairs.answers, read_heads=True, batch_size=cfg.batch_size
    )
    assert acts is not None
    log("baseline log-probs and head activations done")
    text = (data_dir() / "tinyshakespeare.txt").read_text()[:20000]
    ppl_tokens = torch.tensor(tok.encode(text)[: cfg.ppl_tokens])
    base_ppl = iti.perplexity(model, ppl_tokens)

    folds = question_folds(n_q, 2, cfg.seed)
    iti_lp = base_lp.clone()  # held-out pairs get their fold's steered log-probs below
    fold_info, fold_accs = [], []
    for f, test_q in enumerate(folds):
        train_q = [q for g, fold in enumerate(folds) if g != f for q in fold]
        val_q, fit_q = validation_split(train_q, cfg.val_frac, cfg.seed + f)
        grid_q = val_q[: cfg.grid_questions]
        fit_rows, val_rows = pairs.rows(fit_q), pairs.rows(val_q)
        accs = iti.head_probe_accuracy(
            acts, pairs.labels, fit_rows, val_rows, steps=cfg.probe_steps
        )
        fold_accs.append(accs)
        ranked = iti.top_heads(accs, max(cfg.ks))
        y_fit = pairs.labels[fit_rows]
        grid_rows = pairs.rows(grid_q)
        base_val = question_scores(pairs, base_lp[grid_rows], grid_q)
        grid = [{"k": 0, "alpha": 0.0, "ppl": round(base_ppl, 3),
                 **{m: round(float(base_val[m].mean()), 4) for m in METRICS}}]  # fmt: skip
        dirs_for = {}
        for k in cfg.ks:
            dirs_for[k] = iti.truth_directions(acts[fit_rows], y_fit, ranked[:k])
            for a in cfg.alphas:
                with dirs_for[k].vector(model, a).apply(model):
                    lps = score(model, pairs, grid_q, cfg.batch_size)
                    ppl = iti.perplexity(model, ppl_tokens)
                s = question_scores(pairs, lps, grid_q)
                grid.append({"k": k, "alpha": a, "ppl": round(ppl, 3),
                             **{m: round(float(s[m].mean()), 4) for m in METRICS}})  # fmt: skip
                log(f"fold {f + 1}: K={k} alpha={a} val MC2 {grid[-1]['mc2']:.4f} "
                    f"(baseline {grid[0]['mc2']:.4f}), perplexity {ppl:.1f}")  # fmt: skip
        best = choose_setting(grid, cfg.max_ppl_ratio * base_ppl)
        ppl = best["ppl"]
        if best["alpha"] > 0:
            with dirs_for[best["k"]].vector(model, best["alpha"]).apply(model):
                iti_lp[pairs.rows(test_q)] = score(model, pairs, test_q, cfg.batch_size)
        log(f"fold {f + 1}: chose K={best['k']} alpha={best['alpha']}; held-out fold scored")
        test_rows = pairs.rows(test_q)
        b_f = question_scores(pairs, base_lp[test_rows], test_q)
        s_f = question_scores(pairs, iti_lp[test_rows], test_q)
        fold_held_out = {m: _ci_row(s_f[m] - b_f[m], cfg.seed) for m in METRICS}
        fold_info.append({
            "test_questions": len(test_q), "fit_questions": len(fit_q),
            "val_questions": len(val_q), "grid_questions": len(grid_q),
            "chosen": {"k": best["k"], "alpha": best["alpha"]}, "ppl": round(ppl, 3),
            "best_head_acc": round(float(accs.max()), 4),
            "top_heads": [[la, h, round(float(accs[la, h]), 3)] for la, h in ranked[: best["k"]]],
            "grid": grid, "held_out_difference": fold_held_out,
        })  # fmt: skip

    all_q = list(range(n_q))
    base = question_scores(pairs, base_lp[pairs.rows(all_q)], all_q)
    steered = question_scores(pairs, iti_lp[pairs.rows(all_q)], all_q)
    held_out = {
        m: {
            "baseline": _ci_row(base[m], cfg.seed),
            "iti": _ci_row(steered[m], cfg.seed),
            "difference": _ci_row(steered[m] - base[m], cfg.seed),
        }
        for m in METRICS
    }
    _heatmap(fold_accs, fold_info, out)
    metrics = {
        "n_questions": n_q, "n_pairs": n_pairs, "tokens_per_pass": n_tokens,
        "answers_kept": {"max_correct": cfg.max_correct, "max_incorrect": cfg.max_incorrect},
        "held_out": held_out, "folds": fold_info, "base_ppl": round(base_ppl, 3),
        "mc1_gain": held_out["mc1"]["difference"]["mean"],
        "mc2_gain": held_out["mc2"]["difference"]["mean"],
        "seconds": round(time.time() - t0, 1), "cpu_seconds": round(time.process_time() - c0, 1),
    }  # fmt: skip
    out.write_report(_report(cfg, metrics))
    log_run(out.path, metrics)
    log(
        f"done: MC2 {held_out['mc2']['baseline']['mean']:.4f} -> {held_out['mc2']['iti']['mean']:.4f}"
    )
    return metrics


def _heatmap(fold_accs: list[torch.Tensor], fold_info: list[dict], out: RunDir) -> None:
    fig, axes = plt.subplots(
        1, len(fold_accs), figsize=(4.5 * len(fold_accs), 6), squeeze=False, layout="constrained"
    )
    top = max(0.6, max(float(a.max()) for a in fold_accs))
    for f, (ax, accs) in enumerate(zip(axes[0], fold_accs, strict=True)):
        im = ax.imshow(accs.numpy(), aspect="auto", cmap="viridis", vmin=0.5, vmax=top)
        k = fold_info[f]["chosen"]["k"]
        for layer, head, _ in fold_info[f]["top_heads"][:k]:
            ax.add_patch(plt.Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, ec="red"))
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(
            f"fold {f + 1}: probe acc. on val questions\n(chosen top {k} boxed)", fontsize=9
        )
    fig.colorbar(im, ax=axes[0].tolist(), label="probe accuracy")
    fig.savefig(out.file("probe_accuracy.png"), dpi=120)
    plt.close(fig)


def _report(cfg: Config, m: dict) -> str:
    h = m["held_out"]
    names = {"mc1": "MC1 (top answer among all listed is correct)",
             "mc1_best": "MC1-best (best answer above every incorrect one)",
             "mc2": "MC2 (normalized mass on correct answers)"}  # fmt: skip

    def cell(r: dict) -> str:
        return f"{r['mean']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]"

    rows = [f"| {names[k]} | {cell(h[k]['baseline'])} | {cell(h[k]['iti'])} | "
            f"{h[k]['difference']['mean']:+.3f} [{h[k]['difference']['ci95'][0]:+.3f}, "
            f"{h[k]['difference']['ci95'][1]:+.3f}] |" for k in METRICS]  # fmt: skip
    verdicts = []
    for k in ("mc1", "mc2"):
        lo, hi = h[k]["difference"]["ci95"]
        if lo > 0:
            verdicts.append(f"{k.upper()}: ITI improves it; the 95% interval of the paired "
                            f"difference [{lo:+.3f}, {hi:+.3f}] excludes zero.")  # fmt: skip
        elif hi < 0:
            verdicts.append(f"{k.upper()}: ITI lowers it; the interval [{lo:+.3f}, {hi:+.3f}] "
                            "excludes zero on the negative side.")  # fmt: skip
        else:
            verdicts.append(f"{k.upper()}: the 95% interval of the paired difference "
                            f"[{lo:+.3f}, {hi:+.3f}] includes zero: no measurable effect on "
                            f"this model at this size of test set.")  # fmt: skip
    worst = max(info["ppl"] for info in m["folds"]) / m["base_ppl"]
    if worst > 1.5:
        two_way = cfg.max_correct == 1 and cfg.max_incorrect == 1
        below = two_way and h["mc1"]["baseline"]["mean"] < 0.5
        verdicts.append(
            f"Cost: the chosen settings raise perplexity up to {worst:.1f}x (cap: "
            f"{cfg.max_ppl_ratio or 'none'}). A damaged model drifts toward chance"
            + (
                ", and the unsteered model is below chance here (it prefers the imitative "
                "falsehoods), so part of the gain may be degradation rather than truthfulness"
                if below
                else ", so weigh any gain against it"
            )
            + "."
        )
    mc = cfg.max_correct or "all"
    mi = cfg.max_incorrect or "all"
    fold_lines = []
    for f, info in enumerate(m["folds"]):
        c = info["chosen"]
        fold_lines += [
            f"### Fold {f + 1} (held out: {info['test_questions']} questions)",
            "",
            f"Probes fitted on {info['fit_questions']} training-fold questions; heads ranked by "
            f"probe accuracy on {info['val_questions']} validation questions (best "
            f"{info['best_head_acc']:.3f}); grid scored on {info['grid_questions']} of them. "
            f"Chosen: **K={c['k']}, alpha={c['alpha']}**; perplexity {m['base_ppl']:.2f} -> "
            f"{info['ppl']:.2f}."
            + "".join(
                f" Held-out {k.upper()} difference {d['mean']:+.3f} "
                f"[{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]."
                for k, d in info.get("held_out_difference", {}).items()
                if k in ("mc1", "mc2")
            ),
            "",
            "| K | alpha | val MC1 | val MC1-best | val MC2 | perplexity |",
            "|---|---|---|---|---|---|",
            *[
                f"| {g['k']} | {g['alpha']} | {g['mc1']:.3f} | {g['mc1_best']:.3f} | "
                f"{g['mc2']:.3f} | {g.get('ppl', float('nan')):.1f} |"
                for g in info["grid"]
            ],
            "",
        ]
    lines = [
        f"# ITI on TruthfulQA ({cfg.model})",
        "",
        f"{m['n_questions']} questions, {m['n_pairs']} (question, answer) pairs: per question up "
        f"to {mc} correct answers (the best answer first) and up to {mi} incorrect answers "
        "(file order). Pair text `Q: {question}\\nA: {answer}` (no few-shot primer, no chat "
        "template); an answer's score is log p(answer tokens | `Q: ...\\nA:`), summed. Probe "
        "features: each head's z at the answer's last token, label correct / incorrect.",
        "",
        "Two folds of whole questions. In each, probes and truth directions use the training "
        f"fold less {cfg.val_frac:.0%} of its questions; those validation questions rank the "
        "heads by probe accuracy and choose (K, alpha) by mean MC2 (alpha 0 = unsteered is in the "
        "grid) among the settings that raise perplexity at most "
        + (f"{cfg.max_ppl_ratio:g}x" if cfg.max_ppl_ratio > 0 else "without limit")
        + " (the first "
        f"{cfg.ppl_tokens} tinyshakespeare tokens). The held-out fold is then scored once. Intervention: alpha * sigma * theta added "
        "to each chosen head's z at every position (theta: unit mass-mean correct - incorrect "
        "direction). Pooled over both folds, every question is scored once by a model steered "
        "with directions fitted without it.",
        "",
        f"## Held out: all {m['n_questions']} questions (bootstrap 95% intervals over questions)",
        "",
        "| metric | baseline | ITI | ITI - baseline (paired) |",
        "|---|---|---|---|",
        *rows,
        "",
        *verdicts,
        "",
        "MC1 here follows the issue: the highest-scoring answer among all listed correct and "
        "incorrect ones is a correct one. MC1-best is the TruthfulQA repository's MC1 (best answer "
        f"vs the incorrect ones). With {mc} correct and {mi} incorrect answers kept per question, "
        "chance levels differ from the published full-list numbers"
        + (
            " (here every question is a two-way choice, best answer vs the first incorrect one: "
            "MC1 = MC1-best, chance 0.5)."
            if cfg.max_correct == 1 and cfg.max_incorrect == 1
            else "."
        ),
        "",
        f"Cost: perplexity on the first {cfg.ppl_tokens} tinyshakespeare tokens "
        f"{m['base_ppl']:.2f} unsteered; per fold below.",
        "",
        *fold_lines,
        "![](probe_accuracy.png)",
        "",
        f"Run time {m['seconds'] / 60:.1f} min wall"
        + (f", {m['cpu_seconds'] / 60:.1f} min CPU." if "cpu_seconds" in m else "."),
    ]
    return "\n".join(lines) + "\n"
