"""Trigram detection: a 1-layer transformer learns a sparse trigram language; find the parts that do it.

Every context (a, b) of the language allows only `branching` next tokens. The model detects
the trigram when its top prediction after `... a b` is one of them. To know `a` at the position
of `b`, an attention head must copy the previous token; an MLP then has to turn the pair into
the allowed successors (a lookup no attention-only layer can do). The recipe trains the model,
scores heads with the previous-token detector, ranks MLP neurons by mean ablation, and checks
that ablating the named components breaks detection.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from lmlab.config import Config as ModelConfig
from lmlab.data.tasks.trigram import TrigramTask
from lmlab.interp import ablation, heads, viz
from lmlab.interp.activation_cache import run_with_cache
from lmlab.interp.circuit_plots import plot_bars, plot_curves, plot_line
from lmlab.interp.toy_train import lm_loss
from lmlab.model import Transformer
from lmlab.recipes._toy import fit, toy_train_config
from lmlab.runs import RunDir
from lmlab.train import TrainConfig
from lmlab.train.logging import log_run

SUMMARY = (
    "1-layer transformer on a sparse trigram language: previous-token head + MLP neurons, ablated"
)


def default_train() -> TrainConfig:
    """AdamW 3e-3, 50 warmup steps then cosine to 0, weight decay 0.01, 800 steps of 32 x 64 tokens."""
    return toy_train_config(
        max_steps=800, batch_size=32, block_size=64, lr=3e-3, warmup_steps=50, weight_decay=0.01,
        eval_interval=100, seed=1,
    )  # fmt: skip


@dataclass
class Config:
    train: TrainConfig = field(default_factory=default_train)  # seed: the training batches'
    vocab_size: int = 32
    branching: int = 3  # allowed next tokens per context (a, b)
    task_seed: int = 0  # which random trigram table
    d_model: int = 64
    n_heads: int = 2
    d_ff: int = 256
    eval_seqs: int = 256
    neuron_sweep_seqs: int = 64  # held-out sequences used to rank the neurons
    threshold: float = 0.6  # "detection is broken" below this accuracy
    init_seed: int = 0  # the model's initialization (and the neuron sweep's sequences)


def build_model(cfg: Config) -> Transformer:
    """One layer: attention (to fetch the previous token) and a GELU MLP (to look up the pair)."""
    torch.manual_seed(cfg.init_seed)
    return Transformer(
        ModelConfig(
            name="trigram-1l",
            vocab_size=cfg.vocab_size,
            d_model=cfg.d_model,
            n_layers=1,
            n_heads=cfg.n_heads,
            d_ff=cfg.d_ff,
            max_seq_len=cfg.train.block_size,
            positions="learned",
            mlp="gelu",
            tie_embeddings=False,
        )
    )


def detection(logits: torch.Tensor, x: torch.Tensor, probs: torch.Tensor) -> dict[str, float]:
    """Top-1 at every position with a full context: allowed by the table / the table's most likely."""
    pred = logits[:, 1:].argmax(-1)
    a, b = x[:, :-1], x[:, 1:]
    return {
        "accuracy": float((probs[a, b, pred] > 0).float().mean()),
        "top1_is_most_likely": float((probs[a, b].argmax(-1) == pred).float().mean()),
    }


def run(cfg: Config, out: RunDir) -> dict:
    """Train, measure detection, name the components, ablate them; plots and report."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    t0 = time.perf_counter()
    task = TrigramTask(cfg.vocab_size, cfg.train.block_size, cfg.branching, cfg.task_seed)
    model = build_model(cfg)
    hx, hy = task.get_batch("val", cfg.eval_seqs, torch.Generator().manual_seed(10**6))

    def evaluate(step: int) -> dict:
        with torch.no_grad():
            logits = model(hx)
        return {
            "held_out_loss": float(lm_loss(logits[:, 1:], hy[:, 1:])),
            **detection(logits, hx, task.probs),
        }

    def batch(g: torch.Generator):
        x, y = task.get_batch("train", cfg.train.batch_size, g)
        y = y.clone()
        y[:, 0] = -100  # position 0 has no full context
        return x, y

    hist = fit(model, batch, cfg.train, evaluate, "trigram")
    train_s = time.perf_counter() - t0
    final = hist[-1]

    def acc_without(components: list[str], x=hx) -> float:
        means = ablation.mean_activations(model, x, components) if components else None
        return detection(ablation.run_ablated(model, x, components, means=means), x, task.probs)[
            "accuracy"
        ]

    # heads: previous-token detector + mean ablation of each head
    scores = heads.all_head_scores(model, n=cfg.train.block_size // 2 - 1, batch=16)
    prev = scores["previous_token"][0]
    head_rows = [
        {
            "head": f"L0H{h}",
            "previous_token": float(prev[h]),
            "accuracy_ablated": acc_without([f"L0H{h}"]),
        }
        for h in range(cfg.n_heads)
    ]
    prev_head = max(head_rows, key=lambda r: r["previous_token"])["head"]
    prev_heads = [r["head"] for r in head_rows if r["previous_token"] >= 0.3] or [prev_head]
    prev_heads_ablated = acc_without(prev_heads)
    mlp_ablated = acc_without(["L0MLP"])
    all_heads_ablated = acc_without([r["head"] for r in head_rows])

    # neurons: rank by the loss increase of mean-ablating each one alone
    sx, sy = hx[: cfg.neuron_sweep_seqs], hy[: cfg.neuron_sweep_seqs]
    neuron_names = [f"L0N{i}" for i in range(cfg.d_ff)]
    means = ablation.mean_activations(model, hx, ["L0N0"])
    with torch.no_grad():
        base = float(lm_loss(model(sx)[:, 1:], sy[:, 1:]))
    effect = torch.tensor(
        [
            float(lm_loss(ablation.run_ablated(model, sx, [n], means=means)[:, 1:], sy[:, 1:]))
            - base
            for n in neuron_names
        ]
    )
    order = effect.argsort(descending=True).tolist()
    g = torch.Generator().manual_seed(cfg.init_seed + 7)
    shuffled = torch.randperm(cfg.d_ff, generator=g).tolist()
    ks = sorted(
        {k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, cfg.d_ff) if k <= cfg.d_ff}
    )
    top_curve, rand_curve = [], []
    for k in ks:
        top_curve.append(acc_without([neuron_names[i] for i in order[:k]]))
        rand_curve.append(acc_without([neuron_names[i] for i in shuffled[:k]]))
    k_break = next((k for k, a in zip(ks, top_curve, strict=True) if a < cfg.threshold), None)

    top_neurons = _describe_neurons(model, task, order[:5], effect)

    steps = [r["step"] for r in hist]
    plot_curves(
        steps,
        {"held-out loss": [r["held_out_loss"] for r in hist]},
        out.file("training.png"),
        right={
            "detection accuracy": [r["accuracy"] for r in hist],
            "top-1 = most likely": [r["top1_is_most_likely"] for r in hist],
        },
        right_label="accuracy",
        title=f"trigram language (entropy floor {task.entropy():.2f} nats)",
    )
    plot_bars(
        ["none", *[r["head"] for r in head_rows], "+".join(prev_heads), "all heads", "MLP"],
        [
            final["accuracy"],
            *[r["accuracy_ablated"] for r in head_rows],
            prev_heads_ablated,
            all_heads_ablated,
            mlp_ablated,
        ],
        out.file("ablations.png"),
        title="detection accuracy with a component mean-ablated",
        ylabel="held-out detection accuracy",
        hline=cfg.threshold,
    )
    plot_line(
        ks,
        {"top neurons (by ablation effect)": top_curve, "random neurons": rand_curve},
        out.file("neuron_ablation.png"),
        title="ablating the k most important neurons vs k random ones",
        xlabel="neurons mean-ablated (k)",
        ylabel="detection accuracy",
    )
    viz.plot_head_scores(
        scores["previous_token"], out.file("previous_token_scores.png"), "previous-token score"
    )
    with torch.no_grad():
        _, cache = run_with_cache(model, hx[:1, :20], names_filter="blocks.0.attn.hook_pattern")
    viz.plot_pattern(
        cache["pattern", 0][0, int(prev_head.split("H")[1])],
        [str(int(t)) for t in hx[0, :20]],
        out.file("previous_token_head_pattern.png"),
        f"{prev_head} on a held-out sequence",
    )

    metrics = {
        "held_out_accuracy": final["accuracy"],
        "held_out_top1_is_most_likely": final["top1_is_most_likely"],
        "held_out_loss": final["held_out_loss"],
        "entropy_floor": task.entropy(),
        "held_out_positions": int(hx[:, 1:].numel()),
        "heads": head_rows,
        "previous_token_head": prev_head,
        "previous_token_heads": prev_heads,
        "accuracy_previous_token_heads_ablated": prev_heads_ablated,
        "accuracy_all_heads_ablated": all_heads_ablated,
        "accuracy_mlp_ablated": mlp_ablated,
        "neuron_ablation_k": ks,
        "accuracy_top_k_neurons_ablated": top_curve,
        "accuracy_random_k_neurons_ablated": rand_curve,
        "neurons_to_break": k_break,
        "top_neurons": top_neurons,
        "train_seconds": train_s,
        "threads": cfg.train.threads,
    }
    metrics["total_seconds"] = time.perf_counter() - t0
    out.write_report(_report(cfg, metrics))
    log_run(out.path, metrics, {"train": hist})
    return metrics


def _describe_neurons(
    model: Transformer, task: TrigramTask, idx: list[int], effect: torch.Tensor
) -> list[dict]:
    """For each neuron: the contexts (a, b) that drive it most and the tokens its output promotes."""
    V = task.vocab_size
    a, b = torch.meshgrid(torch.arange(V), torch.arange(V), indexing="ij")
    x = torch.stack([a.reshape(-1), b.reshape(-1)], 1)  # every context as a 2-token sequence
    with torch.no_grad():
        _, cache = run_with_cache(model, x, names_filter="blocks.0.mlp.hook_post")
        act = cache["blocks.0.mlp.hook_post"][:, 1]  # [V*V, d_ff] at the position of b
        w_out = model.blocks[0].mlp.down.weight.T  # [d_ff, d_model]
        ln = model.ln_final
        direction = (w_out - w_out.mean(-1, keepdim=True)) * ln.weight
        promoted = direction @ model.unembed.weight.T  # [d_ff, V]
    rows = []
    for i in idx:
        ctx = act[:, i].topk(3).indices.tolist()
        contexts = [(c // V, c % V) for c in ctx]
        rows.append(
            {
                "neuron": f"L0N{i}",
                "loss_increase": float(effect[i]),
                "top_contexts": contexts,
                "allowed_next_of_top_context": (task.probs[contexts[0]] > 0)
                .nonzero()[:, 0]
                .tolist(),
                "promotes": promoted[i].topk(3).indices.tolist(),
            }
        )
    return rows


def _report(cfg: Config, m: dict) -> str:
    lines = [
        "# Trigram detection: which components do it",
        "",
        f"Language: vocabulary {cfg.vocab_size}, each context (a, b) allows {cfg.branching} next "
        f"tokens (random table, seed {cfg.task_seed}); entropy floor {m['entropy_floor']:.3f} nats. "
        f"Model: 1 layer, {cfg.n_heads} heads, d_model={cfg.d_model}, GELU MLP with {cfg.d_ff} "
        f"neurons, learned positions. {cfg.train.max_steps} AdamW steps, batch "
        f"{cfg.train.batch_size} x {cfg.train.block_size} tokens.",
        "",
        "## Detection",
        "",
        f"On {cfg.eval_seqs} held-out sequences ({m['held_out_positions']} positions with a full "
        f"context, from a separate generator) the top prediction is an allowed trigram completion "
        f"**{100 * m['held_out_accuracy']:.2f}%** of the time (the single most likely completion "
        f"{100 * m['held_out_top1_is_most_likely']:.1f}%; the table's own probabilities make that one "
        f"harder). Held-out loss {m['held_out_loss']:.3f} vs the floor {m['entropy_floor']:.3f}.",
        "",
        "![](training.png)",
        "",
        "## Components",
        "",
        "| ablated (mean) | previous-token score | detection accuracy |",
        "|---|---|---|",
        f"| nothing | | {100 * m['held_out_accuracy']:.1f}% |",
    ]
    for r in m["heads"]:
        lines.append(
            f"| {r['head']} | {r['previous_token']:.2f} | {100 * r['accuracy_ablated']:.1f}% |"
        )
    ph = ", ".join(m["previous_token_heads"])
    lines += [
        f"| previous-token heads {ph} together | | "
        f"{100 * m['accuracy_previous_token_heads_ablated']:.1f}% |",
        f"| all heads | | {100 * m['accuracy_all_heads_ablated']:.1f}% |",
        f"| L0MLP (whole MLP) | | {100 * m['accuracy_mlp_ablated']:.1f}% |",
        "",
        f"The components that matter: the previous-token head(s) **{ph}** (score >= 0.3; best "
        f"{m['previous_token_head']}), which bring `a` to the position of `b` (without them the "
        f"model sees only `b`: {100 * m['accuracy_previous_token_heads_ablated']:.1f}%), and the "
        f"**MLP**, which turns the pair into its allowed successors "
        f"({100 * m['accuracy_mlp_ablated']:.1f}% without it). Threshold: "
        f"{100 * cfg.threshold:.0f}%.",
        "",
        "![](ablations.png)",
        "![](previous_token_head_pattern.png)",
        "",
        "### MLP neurons",
        "",
        "Each neuron is mean-ablated alone and ranked by the held-out loss increase; then the top "
        "k are ablated together, against k random neurons:",
        "",
        "| k | " + " | ".join(str(k) for k in m["neuron_ablation_k"]) + " |",
        "|---|" + "---|" * len(m["neuron_ablation_k"]),
        "| top-k neurons | "
        + " | ".join(f"{100 * a:.0f}%" for a in m["accuracy_top_k_neurons_ablated"])
        + " |",
        "| random k neurons | "
        + " | ".join(f"{100 * a:.0f}%" for a in m["accuracy_random_k_neurons_ablated"])
        + " |",
        "",
    ]
    ks, top, rnd = (
        m["neuron_ablation_k"],
        m["accuracy_top_k_neurons_ablated"],
        m["accuracy_random_k_neurons_ablated"],
    )
    half = len(ks) // 2
    lines.append(
        f"With k={ks[half]} neurons ablated, the top-ranked ones leave {100 * top[half]:.0f}% and "
        f"random ones {100 * rnd[half]:.0f}%; detection falls below {100 * cfg.threshold:.0f}% "
        f"at k={m['neurons_to_break']} of {cfg.d_ff}. No small set of neurons carries the lookup: "
        "each neuron holds a few contexts, and the MLP as a whole is the component."
    )
    lines += [
        "",
        "![](neuron_ablation.png)",
        "",
        "| neuron | loss increase alone | contexts (a, b) that drive it most | allowed after the top context | promotes |",
        "|---|---|---|---|---|",
    ]
    for n in m["top_neurons"]:
        lines.append(
            f"| {n['neuron']} | {n['loss_increase']:.4f} | {n['top_contexts']} | "
            f"{n['allowed_next_of_top_context']} | {n['promotes']} |"
        )
    lines += [
        "",
        f"Wall clock: {m['train_seconds']:.0f} s training, {m['total_seconds']:.0f} s in all, "
        f"{cfg.train.threads} torch thread(s).",
    ]
    return "\n".join(lines)
