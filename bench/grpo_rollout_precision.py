"""Does sampling GRPO rollouts from a quantized copy change learning? grpo-addition per precision.

    python bench/grpo_rollout_precision.py [--precisions policy bf16 int4] [--seeds 0 1 2]
        [--steps 400] [--out /tmp/lmlab_grpo_precision]

Runs the `grpo-addition` recipe (the same supervised model: the SFT seed is fixed; GRPO seeds
vary) once per rollout precision and GRPO seed, then prints per precision the held-out exact match
after GRPO and the mean reward over the last 100 steps (mean and spread over seeds), the
difference to "policy" with a spread from the seeds, and plots the mean reward curves
(`rewards.png` under --out). Training is float32 in every run; only the sampler changes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from lmlab.recipes import grpo_addition
from lmlab.runs import RunDir


def one_run(precision: str, seed: int, steps: int, root: Path) -> dict:
    cfg = grpo_addition.Config(rollout_precision=precision)
    cfg.train = replace(cfg.train, seed=seed, max_steps=steps)
    out = RunDir.create(f"{precision}-seed{seed}", root)
    t = time.perf_counter()
    metrics = grpo_addition.run(cfg, out)
    rows = [
        json.loads(line) for line in (out.path / "grpo" / "metrics.jsonl").read_text().splitlines()
    ]
    rewards = [r["reward"] for r in rows if "reward" in r]
    return {"exact": metrics["exact_match_after"], "before": metrics["exact_match_before"],
            "last100": statistics.fmean(rewards[-100:]), "rewards": rewards,
            "seconds": time.perf_counter() - t}  # fmt: skip


def smooth(xs: list[float], k: int = 20) -> list[float]:
    return [statistics.fmean(xs[max(0, i - k + 1) : i + 1]) for i in range(len(xs))]


def spread(xs: list[float]) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.fmean(xs):.3f} ± {sd:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precisions", nargs="+", default=["policy", "bf16", "int4"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--out", default="/tmp/lmlab_grpo_precision")
    args = ap.parse_args()
    root = Path(args.out)
    torch.set_num_threads(1)
    res = {p: [one_run(p, s, args.steps, root) for s in args.seeds] for p in args.precisions}
    base = res.get("policy")
    print(f"\ngrpo-addition, {args.steps} GRPO steps, GRPO seeds {args.seeds} (SFT model shared; "
          f"exact match before GRPO {res[args.precisions[0]][0]['before']:.3f})")  # fmt: skip
    print("| rollouts | exact match after (mean ± sd) | mean reward, last 100 steps | "
          "exact match − policy, paired by seed |")  # fmt: skip
    print("|---|---|---|---|")
    for p, runs in res.items():
        diff = "—"
        if base is not None and p != "policy":
            d = [r["exact"] - b["exact"] for r, b in zip(runs, base, strict=True)]
            diff = spread(d)
        print(f"| {p} | {spread([r['exact'] for r in runs])} | "
              f"{spread([r['last100'] for r in runs])} | {diff} |")  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for p, runs in res.items():
        mean = [statistics.fmean(col) for col in zip(*(r["rewards"] for r in runs), strict=True)]
        ax.plot(smooth(mean), label=f"{p} ({len(runs)} seeds)")
    ax.set(xlabel="GRPO step", ylabel="mean reward (20-step average)", title="grpo-addition")
    ax.legend()
    fig.savefig(root / "rewards.png", dpi=110, bbox_inches="tight")
    (root / "results.json").write_text(json.dumps(res))
    print(f"plot: {root / 'rewards.png'}")


if __name__ == "__main__":
    main()
