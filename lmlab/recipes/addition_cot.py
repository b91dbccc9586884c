"""Addition GPT with a scratchpad (chain of thought) vs the direct answer; attention traces of its steps.

Both models have the same size and training budget (equal optimizer steps and sequences per step,
same operand stream) on operands of 1..3 digits. The scratchpad model writes `x+y+c=ts;` per digit
column (see `lmlab.data.tasks.addition_cot`), then the answer; the direct model writes the reversed
answer. Accuracy is full-answer exact match on held-out pairs of 1..3 digits and on 4 and 5 digits.
Tracing: for each generated token, the attention (max over heads, per layer) to the earlier tokens,
and the first step of each failed scratchpad that departs from the true step.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field, replace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Rectangle

from lmlab.data.tasks.addition_cot import (
    AdditionCoTTask,
    FirstError,
    complete,
    completion,
    encode,
    first_wrong_step,
    seq_len,
    split_completion,
    steps,
)
from lmlab.eval.bootstrap import bootstrap_ci
from lmlab.interp.activation_cache import run_with_cache
from lmlab.model import Transformer
from lmlab.runs import RunDir
from lmlab.train import TrainConfig, Trainer
from lmlab.train.logging import log_run
from lmlab.train.plots import plot_loss

SUMMARY = (
    "addition GPT writing digit-by-digit work with carries vs direct answers: 1-3, 4, 5 digits"
)
PARTS = (
    "operand digit",
    "carry in",
    "column sum",
    "malformed step",
    "missing step",
    "extra step",
    "answer",
)


def default_train() -> TrainConfig:
    """addition's GPT (2 layers, d_model 64, learned positions), AdamW 3e-3 cosine, 3,000 steps of 128."""
    return TrainConfig(
        model="gpt2-tiny",
        model_overrides=dict(d_model=64, n_layers=2, n_heads=4),
        data="task:addition-cot",
        batch_size=128,
        lr=3e-3,
        min_lr=3e-4,
        warmup_steps=50,
        max_steps=3000,
        weight_decay=0.0,
        eval_interval=500,
        eval_iters=2,
        threads=1,
        seed=0,
        tensorboard=False,
    )


@dataclass
class Config:
    train: TrainConfig = field(default_factory=default_train)  # the same for both models
    max_digits: int = 3  # training operands have 1..max_digits digits
    # longer test sets: both operands have exactly d digits
    test_digits: list[int] = field(default_factory=lambda: [4, 5])
    n_test: int = 1000  # pairs per test set
    n_val_check: int = 200  # validation pairs scored at each evaluation
    n_trace: int = 200  # examples per test set whose step attention is scored


def train_model(
    task: AdditionCoTTask, cfg: Config, out: RunDir, name: str
) -> tuple[Transformer, list[dict]]:
    """One model (size fixed by the longest test sequence of either format) trained on `task`."""
    tcfg = replace(cfg.train, out_dir=str(out.path / f"train-{name}"))
    longest = max(seq_len(d, True) for d in (cfg.max_digits, *cfg.test_digits))
    torch.manual_seed(tcfg.seed)
    model = Transformer(tcfg.model_config(task.vocab_size, longest))
    va, vb = (t[: cfg.n_val_check].tolist() for t in task.val)
    t0 = time.perf_counter()

    def val_exact_match(trainer: Trainer, rec: dict) -> None:
        outs = complete(trainer.model, [f"{a}+{b}=" for a, b in zip(va, vb, strict=True)], longest)
        rec["val_exact_match"] = float(np.mean(correct(outs, va, vb, task.scratchpad)))
        rec["seconds"] = time.perf_counter() - t0

    history = Trainer(model, tcfg, task, [val_exact_match]).fit()
    return model, history


def correct(outs: list[str], a: list[int], b: list[int], scratchpad: bool) -> list[bool]:
    """Full-answer exact match of each completion (it must also end with `$`)."""
    return [
        (w := split_completion(o, scratchpad)).done and w.answer == str(x + y)
        for o, x, y in zip(outs, a, b, strict=True)
    ]


def eval_sets(task: AdditionCoTTask, max_digits: int) -> dict[str, tuple[list[int], list[int]]]:
    """Name -> (a, b): the held-out 1..max_digits pairs, then each longer set."""
    sets = {f"1-{max_digits} digits": (task.test[0].tolist(), task.test[1].tolist())}
    for d, (a, b) in task.longer.items():
        sets[f"{d} digits"] = (a.tolist(), b.tolist())
    return sets


def roles(prompt: str, text: str) -> list[str]:
    """A name per token of prompt+text: a0/b0 (operand digits from the right), s1.c (the carry-in
    of the second step, s0 being the first; fields x + y + c = t s ;), ans0.. (answer digits)."""
    a, b = prompt[:-1].split("+")
    names = [f"a{len(a) - 1 - i}" for i in range(len(a))] + ["+"]
    names += [f"b{len(b) - 1 - i}" for i in range(len(b))] + ["="]
    fields = ("x", "+", "y", "+", "c", "=", "t", "s")
    body, end = (text[:-1], "$") if text.endswith("$") else (text, "")
    parts = body.split(";")
    for k, part in enumerate(parts[:-1]):
        names += [f"s{k}.{fields[j]}" if len(part) == 8 else f"s{k}[{j}]" for j in range(len(part))]
        names.append(f"s{k}.;")
    names += [f"ans{j}" for j in range(len(parts[-1]))] + (["$"] if end else [])
    return names


@torch.no_grad()
def attention(model: Transformer, text: str) -> torch.Tensor:
    """[L, T, T] attention of each query to each key, the max over heads, for the tokens of `text`."""
    ids = torch.tensor([encode(text)], device=next(model.parameters()).device)
    _, cache = run_with_cache(model, ids, names_filter=lambda n: n.endswith("attn.hook_pattern"))
    return torch.stack([cache["pattern", i][0].amax(0) for i in range(len(model.blocks))]).cpu()


def step_rows(prompt: str, text: str) -> list[tuple[int, int]]:
    """For each written step, the query rows [lo, hi) of the positions that generate its tokens."""
    out, pos = [], len(prompt) - 1
    for part in text.split(";")[:-1]:
        out.append((pos, pos + len(part) + 1))
        pos += len(part) + 1
    return out


def operand_lookup(model: Transformer, a: list[int], b: list[int], outs: list[str]) -> float:
    """Share of correctly-written operand digits x (and y) of the steps whose generating query puts
    its largest prompt attention (over layers and heads) on that very digit of a (or b)."""
    hits = total = 0
    for x, y, out in zip(a, b, outs, strict=True):
        prompt = f"{x}+{y}="
        att = attention(model, prompt + out)
        names = roles(prompt, out)
        for k, (lo, _hi) in enumerate(step_rows(prompt, out)):
            if k >= len(steps(x, y)) or out.split(";")[k][:3] != steps(x, y)[k][:3]:
                continue
            for offset, want in ((0, f"a{k}"), (2, f"b{k}")):
                if want not in names:  # the shorter operand's missing digit is written as 0
                    continue
                row = att[:, lo + offset, : len(prompt)].amax(0)
                hits += names[int(row.argmax())] == want
                total += 1
    return hits / max(total, 1)


_FIELD_PART = {"x": "operand digit", "y": "operand digit", "c": "carry in", "t": "column sum",
               "s": "column sum"}  # fmt: skip


@torch.no_grad()
def teacher_forced(model: Transformer, a: int, b: int) -> list[tuple[FirstError, bool]]:
    """Teacher forcing (the true work so far given at every position): for each written token, its
    step and part, and whether the model's next-token prediction is right."""
    prompt, out = f"{a}+{b}=", completion(a, b)
    ids = torch.tensor([encode(prompt + out)], device=next(model.parameters()).device)
    right = (model(ids[:, :-1])[0].argmax(-1) == ids[0, 1:]).tolist()
    names, n_steps = roles(prompt, out), len(steps(a, b))
    found = []
    for pos in range(len(prompt), len(prompt + out)):
        name = names[pos]
        if name.startswith("s"):
            step, fld = name[1:].split(".")
            where = FirstError(int(step), _FIELD_PART.get(fld, "malformed step"))
        else:
            where = FirstError(n_steps, "answer")
        found.append((where, right[pos - 1]))
    return found


def teacher_forced_error(model: Transformer, a: int, b: int) -> FirstError | None:
    """The first step (and part) whose token the model predicts wrong under teacher forcing, or
    None when every written token is predicted right."""
    return next((where for where, ok in teacher_forced(model, a, b) if not ok), None)


def plot_traces(model: Transformer, examples: list[dict], path) -> None:
    """Heatmaps (per layer, max over heads) of generated token -> earlier tokens for each example;
    rows are labelled by the token they generate, the first wrong step is boxed in red."""
    n_layers = len(model.blocks)
    fig, axes = plt.subplots(
        len(examples), n_layers, squeeze=False, figsize=(7.5 * n_layers, 6.5 * len(examples))
    )
    for ex, row_axes in zip(examples, axes, strict=True):
        prompt, out = ex["prompt"], ex["output"]
        text = prompt + out
        att = attention(model, text)
        lo = len(prompt) - 1
        keys = list(text[:-1])
        for layer, ax in enumerate(row_axes):
            ax.imshow(
                att[layer, lo : len(text) - 1, : len(text) - 1].numpy(),
                cmap="Blues",
                vmin=0,
                vmax=1,
                aspect="auto",
            )
            ax.set_xticks(range(len(keys)), keys, fontsize=6)
            ax.set_yticks(range(len(out)), list(out), fontsize=6)
            ax.set_xlabel("earlier token (key)")
            ax.set_ylabel("token being written")
            for _s_lo, s_hi in step_rows(prompt, out):
                ax.axhline(s_hi - lo - 0.5, color="grey", lw=0.4)
            err = ex.get("first_error")
            if err is not None:
                spans = step_rows(prompt, out)
                s_lo, s_hi = (
                    spans[err["step"]]
                    if err["step"] < len(spans)
                    else (spans[-1][1] if spans else lo, len(text) - 1)
                )
                ax.add_patch(
                    Rectangle(
                        (-0.5, s_lo - lo - 0.5),
                        len(keys),
                        s_hi - s_lo,
                        fill=False,
                        ec="red",
                        lw=1.5,
                    )
                )
            verdict = "correct" if ex["correct"] else f"wrong (true {ex['true']})"
            where = f"; first wrong step {err['step'] + 1} ({err['part']})" if err else ""
            ax.set_title(
                f"{ex['set']}: {text}\nlayer {layer}, max over heads: {verdict}{where}", fontsize=8
            )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def top_keys(model: Transformer, ex: dict, k: int = 3) -> list[str]:
    """Per written step: the k earlier tokens with the most attention (mean over the step's query
    rows, max over heads) in each layer, as `step text | L0: a1 b1 s0.t | L1: ...`."""
    prompt, out = ex["prompt"], ex["output"]
    att, names = attention(model, prompt + out), roles(prompt, out)
    lines = []
    for n, (lo, hi) in enumerate(step_rows(prompt, out)):
        layers = []
        for layer in range(att.shape[0]):
            w = att[layer, lo:hi, :hi].mean(0)
            layers.append(f"L{layer}: " + " ".join(names[i] for i in w.topk(min(k, hi)).indices))
        lines.append(f"step {n + 1} `{out.split(';')[n]}` | " + " | ".join(layers))
    return lines


def run(cfg: Config, out: RunDir) -> dict:
    """Train both models, score the test sets, trace the scratchpad model; plots and report."""
    t_start = time.perf_counter()
    tasks = {
        name: AdditionCoTTask(
            cfg.max_digits, name == "scratchpad", tuple(cfg.test_digits), cfg.n_test, seed=1234
        )
        for name in ("scratchpad", "direct")
    }
    sets = eval_sets(tasks["scratchpad"], cfg.max_digits)
    models, histories, results, seconds = {}, {}, {}, {}
    for name, task in tasks.items():
        t0 = time.perf_counter()
        models[name], histories[name] = train_model(task, cfg, out, name)
        seconds[name] = time.perf_counter() - t0
        plot_loss(histories[name], out.file(f"loss-{name}.png"), title=f"addition-cot: {name}")
        for set_name, (a, b) in sets.items():
            prompts = [f"{x}+{y}=" for x, y in zip(a, b, strict=True)]
            outs = complete(models[name], prompts, models[name].cfg.max_seq_len)
            ok = correct(outs, a, b, task.scratchpad)
            acc = float(np.mean(ok))
            results[(name, set_name)] = {
                "acc": acc,
                "ci": bootstrap_ci(np.array(ok, float)),
                "outputs": outs,
                "ok": ok,
            }
            print(f"{name:10s} {set_name:12s} exact match {100 * acc:6.2f}%")

    # tracing the scratchpad model: first wrong step of each failure, attention of each step
    sp = models["scratchpad"]
    failures: dict[str, Counter] = {}
    lookup, examples, forced, field_acc = {}, [], {}, {}
    for set_name, (a, b) in sets.items():
        res = results[("scratchpad", set_name)]
        errs = [
            first_wrong_step(o, x, y)
            for o, x, y, ok in zip(res["outputs"], a, b, res["ok"], strict=True)
            if not ok
        ]
        failures[set_name] = Counter((e.step, e.part) for e in errs if e is not None)
        n = min(cfg.n_trace, len(a))
        lookup[set_name] = operand_lookup(sp, a[:n], b[:n], res["outputs"][:n])
        tf = [teacher_forced(sp, x, y) for x, y in zip(a[:n], b[:n], strict=True)]
        firsts = (next((w for w, ok in t if not ok), None) for t in tf)
        forced[set_name] = Counter((w.step, w.part) for w in firsts if w is not None)
        parts = Counter(w.part for t in tf for w, _ in t)
        hits = Counter(w.part for t in tf for w, ok in t if ok)
        field_acc[set_name] = {p: hits[p] / parts[p] for p in PARTS if parts[p]}
    first_set = next(iter(sets))
    examples.append(_example(sets, results, first_set, want_ok=True))
    failed_in = next(
        (s for s in [*list(sets)[1:], first_set] if not all(results[("scratchpad", s)]["ok"])), None
    )
    if failed_in is not None:
        examples.append(_example(sets, results, failed_in, want_ok=False))
    examples = [e for e in examples if e is not None]
    plot_traces(sp, examples, out.file("trace.png"))
    trace_lines = {
        e["set"] + (" (correct)" if e["correct"] else " (failed)"): top_keys(sp, e)
        for e in examples
    }
    total_s = time.perf_counter() - t_start

    metrics = {
        "accuracy": {f"{m}/{s}": results[(m, s)]["acc"] for m in tasks for s in sets},
        "ci": {f"{m}/{s}": list(results[(m, s)]["ci"]) for m in tasks for s in sets},
        "first_wrong_step": {
            s: {f"step {k + 1}: {p}": n for (k, p), n in c.items()} for s, c in failures.items()
        },
        "teacher_forced_first_error": {
            s: {f"step {k + 1}: {p}": n for (k, p), n in c.items()} for s, c in forced.items()
        },
        "teacher_forced_token_accuracy": field_acc,
        "operand_lookup": lookup,
        "train_seconds": seconds,
        "seconds": total_s,
        "steps": cfg.train.max_steps,
        "params": sum(p.numel() for p in sp.parameters()),
        "positions": sp.cfg.positions,
        "examples": examples,
    }
    out.write_report(
        _report(
            cfg, tasks, sets, results, failures, forced, lookup, trace_lines, metrics, histories
        )
    )
    log_run(
        out.path,
        {k: v for k, v in metrics.items() if k != "examples"},
        {f"train-{m}": h for m, h in histories.items()},
    )
    return metrics


def _example(sets, results, set_name: str, want_ok: bool) -> dict | None:
    """The first test example of `set_name` that the scratchpad model got right (or wrong)."""
    a, b = sets[set_name]
    res = results[("scratchpad", set_name)]
    for x, y, o, ok in zip(a, b, res["outputs"], res["ok"], strict=True):
        if ok == want_ok:
            err = None if ok else first_wrong_step(o, x, y)
            return {
                "set": set_name,
                "prompt": f"{x}+{y}=",
                "output": o,
                "correct": ok,
                "true": x + y,
                "first_error": None if err is None else vars(err),
            }
    return None


def _position_note(positions: str) -> str:
    if positions == "learned":
        return (
            "With learned absolute positions, the position embeddings past the trained length were "
            "never trained, and every step of a longer operand also sits at new positions, so 4- and "
            "5-digit operands are out of distribution in length *and* position."
        )
    return (
        f"With {positions} positions no embedding is untrained, but the longer operands, step "
        "counts and distances between a step and its digits were never seen in training."
    )


def _val(history: list[dict], step: int) -> float | None:
    """The validation exact match recorded at `step`, if any."""
    return next((r["val_exact_match"] for r in history if r.get("step") == step and
                 "val_exact_match" in r), None)  # fmt: skip


def _count_rows(counts: dict[str, Counter], cols: list[str]) -> str:
    """Markdown rows `| step | part | count per set |` of (step, part) counts, in step order."""
    keys = sorted(
        {k for c in counts.values() for k in c}, key=lambda kp: (kp[0], PARTS.index(kp[1]))
    )
    rows = [
        f"| {k + 1} | {p} | " + " | ".join(str(counts[s].get((k, p), 0)) for s in cols) + " |"
        for k, p in keys
    ]
    return "\n".join(rows) or "| - | none | " + " | ".join("0" for _ in cols) + " |"


def _report(
    cfg, tasks, sets, results, failures, forced, lookup, trace_lines, metrics, histories
) -> str:
    tc = cfg.train
    m = tasks["scratchpad"]
    rows = "\n".join(
        f"| {s} | "
        + " | ".join(
            f"{100 * results[(n, s)]['acc']:.1f}% [{100 * results[(n, s)]['ci'][0]:.1f}, "
            f"{100 * results[(n, s)]['ci'][1]:.1f}]"
            for n in tasks
        )
        + " |"
        for s in sets
    )
    cols = list(sets)
    fail_rows, forced_rows = _count_rows(failures, cols), _count_rows(forced, cols)
    n_fail = " | ".join(str(sum(failures[s].values())) for s in cols)
    n_forced = " | ".join(str(sum(forced[s].values())) for s in cols)
    acc_rows = "\n".join(
        f"| {p} | "
        + " | ".join(
            f"{100 * metrics['teacher_forced_token_accuracy'][s][p]:.1f}%"
            if p in metrics["teacher_forced_token_accuracy"][s]
            else "-"
            for s in cols
        )
        + " |"
        for p in ("operand digit", "carry in", "column sum", "malformed step", "answer")
    )
    curve = [
        (r["step"], *(_val(histories[n], r["step"]) for n in tasks))
        for r in histories["scratchpad"]
        if "val_exact_match" in r
    ]
    curve_rows = "\n".join(
        f"| {st} | " + " | ".join("-" if v is None else f"{100 * v:.1f}%" for v in vals) + " |"
        for st, *vals in curve
    )
    traces = "\n\n".join(
        f"{name}:\n\n```\n" + "\n".join(lines) + "\n```" for name, lines in trace_lines.items()
    )
    example = "123+989=" + "".join(s + ";" for s in steps(123, 989)) + "1112$"
    lengths = {d: m.max_len(d) for d in (cfg.max_digits, *cfg.test_digits)}
    return f"""# addition-cot

Two GPTs of the same size ({metrics["params"]:,} parameters: {tc.model} with
{tc.model_overrides}, **{metrics["positions"]} positions**, max_seq_len {m.block_size + 1}) trained with the same
budget: {tc.max_steps:,} optimizer steps of {tc.batch_size} sequences (AdamW lr {tc.lr}, cosine), on the same
stream of operand pairs with 1..{cfg.max_digits} digits (each operand's length uniform, then its value).
Budget is equal in **steps and sequences**, not tokens: a scratchpad sequence is about 3-4x longer,
so that model reads (and is trained on) more tokens.

- **scratchpad**: after `a+b=` it writes one step `x+y+c=ts;` per digit column from the right (x, y
  the digits, c the carry-in, ts the two-digit column total: carry-out t, sum digit s), then the
  answer and `$`: `{example}`.
- **direct**: the answer with its digits reversed, as the `addition` recipe writes it: `123+989=2111$`.

Loss on the written part only. Accuracy: full-answer exact match (greedy; the answer must be right
and end with `$`) on {cfg.n_test:,} held-out pairs per set; 1-{cfg.max_digits} digits = the training distribution
(pairs never trained on), "d digits" = both operands exactly d digits. 95% bootstrap intervals.

| test set | scratchpad | direct |
|---|---|---|
{rows}

Training wall time: scratchpad {metrics["train_seconds"]["scratchpad"]:.0f} s, direct
{metrics["train_seconds"]["direct"]:.0f} s; whole run {metrics["seconds"]:.0f} s.

Learning speed at equal steps: exact match on {cfg.n_val_check} validation pairs (1-{cfg.max_digits} digits,
never trained on) during training.

| step | {" | ".join(tasks)} |
|---|{"---|" * len(tasks)}
{curve_rows}

## Length generalization and positions

The longest training sequence is {lengths[cfg.max_digits]} tokens (scratchpad); the longer sets need
{", ".join(f"{lengths[d]} ({d} digits)" for d in cfg.test_digits)}. {_position_note(metrics["positions"])} Weak length generalization is expected here.

## Where failures start (scratchpad)

The first step of each failed completion that differs from the true step (step 1 = the units
column; "answer" = every step right, the final answer wrong or unterminated). Counts per test set.

| step | what was wrong first | {" | ".join(cols)} |
|---|---|{"---|" * len(cols)}
{fail_rows}
| all | failures | {n_fail} |

Teacher forced (first {cfg.n_trace} pairs of each set): the true work so far is given at every
position, and the step of the first token the model predicts wrong is counted ("answer": all steps
predicted right, an answer token wrong). This shows where the model breaks even when its own
earlier mistakes are taken away.

| step | what was wrong first | {" | ".join(cols)} |
|---|---|{"---|" * len(cols)}
{forced_rows}
| all | pairs with an error | {n_forced} |

Teacher-forced next-token accuracy of each part of the work (same pairs; "malformed step" here
means the fixed symbols `+ = ;` of a step; "answer" the answer digits and `$`):

| part | {" | ".join(cols)} |
|---|{"---|" * len(cols)}
{acc_rows}

Operand lookup (attention): of the step digits x, y written correctly, the share whose generating
position puts its largest attention on the prompt (max over layers and heads) on exactly that
digit of a or b: {", ".join(f"{s} {100 * v:.0f}%" for s, v in lookup.items())}
(first {cfg.n_trace} examples of each set).

## Tracing

![trace](trace.png)

Each panel: rows are the tokens the scratchpad model writes, columns the earlier tokens; colour is
the attention weight of the position that generates the row's token (max over heads, one panel per
layer). Grey lines separate steps; the red box is the first wrong step.

Most-attended earlier tokens per step (mean over the step's rows, max over heads; a0 = units digit
of a, s1.c = the carry-in of step 2 (steps count from s0), fields x + y + c = t s):

{traces}

![loss scratchpad](loss-scratchpad.png) ![loss direct](loss-direct.png)
"""
