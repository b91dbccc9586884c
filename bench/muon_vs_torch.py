"""lmlab's Muon vs `torch.optim.Muon` (torch 2.13): same update when configured alike; speed.

    nice -n 19 python bench/muon_vs_torch.py [--threads 1] [--steps 5] [--reps 5]

Agreement: both optimizers start from the same matrices and get the same gradients for `--steps`
steps, configured alike (lr, momentum 0.95, Nesterov, Keller's coefficients, 5 steps, decoupled
weight decay, the "original" sqrt(max(1, rows/cols)) lr scale). Reported per shape: the relative
difference of the two updates, next to each one's distance from the same iteration run in
float64 (both orthogonalize in bfloat16, so that is the rounding floor they can agree to). A second
row runs both with the Newton–Schulz step swapped for lmlab's float64 one, which isolates every
other part of the step (momentum, Nesterov, lr scale, weight decay): it must agree to ~1e-15.

Speed: median wall time of one `step()` over a SmolLM2-135M-like set of hidden matrices (30
layers' q, k, v, o, gate, up, down) scaled down by `--layers`, and single shapes.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from functools import partial

import torch

import lmlab.optim.muon as lmlab_muon
from lmlab.optim import Muon
from lmlab.optim.newton_schulz import orthogonalize

SMOLLM2 = {  # SmolLM2-135M hidden matrices: d_model 576, 9 heads x 64, 3 kv heads, d_ff 1536
    "q/o": (576, 576),
    "k/v": (192, 576),
    "gate/up": (1536, 576),
    "down": (576, 1536),
}


def pair(shapes, lr=0.02, wd=0.1, seed=0):
    """(lmlab Muon, torch Muon, lmlab params, torch params) over identical starting matrices."""
    g = torch.Generator().manual_seed(seed)
    w = [torch.randn(*s, generator=g) * 0.02 for s in shapes]
    pa = [torch.nn.Parameter(x.clone()) for x in w]
    pb = [torch.nn.Parameter(x.clone()) for x in w]
    a = Muon([{"params": pa, "use_muon": True}], lr=lr, weight_decay=wd, momentum=0.95)
    b = torch.optim.Muon(pb, lr=lr, weight_decay=wd, momentum=0.95, adjust_lr_fn="original")
    return a, b, pa, pb


def agreement(shape, steps: int = 5) -> dict[str, float]:
    """Relative update differences over `steps` steps (worst step): torch vs lmlab, and each
    optimizer's bf16 step vs the same step with float64 Newton–Schulz."""
    a, b, pa, pb = pair([shape])
    a64, _, pa64, _ = pair([shape])
    g = torch.Generator().manual_seed(1)
    worst = dict.fromkeys(("lmlab_vs_torch", "lmlab_vs_fp64", "torch_vs_fp64"), 0.0)
    for _ in range(steps):
        grad = torch.randn(*shape, generator=g)
        start = pa[0].detach().clone()
        for p in (pa[0], pb[0], pa64[0]):
            p.data.copy_(start)  # every optimizer steps from the same point
            p.grad = grad.clone()
        a.step()
        b.step()
        with float64_newton_schulz():
            a64.step()
        ua, ub, u64 = (p.detach() - start for p in (pa[0], pb[0], pa64[0]))
        rel = lambda x, y: float((x - y).norm() / y.norm())  # noqa: E731
        worst["lmlab_vs_torch"] = max(worst["lmlab_vs_torch"], rel(ua, ub))
        worst["lmlab_vs_fp64"] = max(worst["lmlab_vs_fp64"], rel(ua, u64))
        worst["torch_vs_fp64"] = max(worst["torch_vs_fp64"], rel(ub, u64))
    return worst


class float64_newton_schulz:
    """Context: both optimizers orthogonalize with lmlab's iteration in float64 (isolates the rest
    of the step). Patches `torch.optim._muon._zeropower_via_newtonschulz` (private)."""

    def __enter__(self):
        import torch.optim._muon as tm

        self.saved = (lmlab_muon.orthogonalize, tm._zeropower_via_newtonschulz)
        lmlab_muon.orthogonalize = partial(orthogonalize, dtype=torch.float64)
        tm._zeropower_via_newtonschulz = lambda x, coeffs, steps, eps: orthogonalize(
            x, steps, coeffs, dtype=torch.float64
        )
        return self

    def __exit__(self, *exc):
        import torch.optim._muon as tm

        lmlab_muon.orthogonalize, tm._zeropower_via_newtonschulz = self.saved


def rest_of_step(shape, steps: int = 5) -> float:
    """Max |Δparam| between the two optimizers when both use float64 Newton–Schulz."""
    a, b, pa, pb = pair([shape])
    g = torch.Generator().manual_seed(2)
    with float64_newton_schulz():
        for _ in range(steps):
            grad = torch.randn(*shape, generator=g)
            pa[0].grad, pb[0].grad = grad.clone(), grad.clone()
            a.step()
            b.step()
    return float((pa[0].detach() - pb[0].detach()).abs().max())


def step_time(shapes, reps: int) -> tuple[float, float]:
    """Median seconds per step() for lmlab and torch over matrices of `shapes` (alternating)."""
    a, b, pa, pb = pair(shapes)
    for p in pa + pb:
        p.grad = torch.randn_like(p)
    times: dict[str, list[float]] = {"lmlab": [], "torch": []}
    for r in range(reps + 1):
        for name, opt in (("lmlab", a), ("torch", b)):
            t0 = time.perf_counter()
            opt.step()
            if r:  # the first round warms up (state allocation)
                times[name].append(time.perf_counter() - t0)
    return statistics.median(times["lmlab"]), statistics.median(times["torch"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--layers", type=int, default=4, help="SmolLM2-like layers in the speed set")
    args = ap.parse_args()
    if not hasattr(torch.optim, "Muon"):
        raise SystemExit(
            f"torch {torch.__version__} has no torch.optim.Muon; use a torch that does (2.13 has it)"
        )
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{args.threads} thread(s)")  # fmt: skip
    print("\nagreement (relative update difference, worst of", args.steps, "steps)")
    print(
        f"{'shape':>12} {'lmlab-torch':>12} {'lmlab-fp64':>11} {'torch-fp64':>11} {'rest Δmax':>10}"
    )
    for shape in [(64, 32), (32, 64), *SMOLLM2.values()]:
        r = agreement(shape, args.steps)
        rest = rest_of_step(shape, args.steps)
        print(f"{shape!s:>12} {r['lmlab_vs_torch']:12.4f} {r['lmlab_vs_fp64']:11.4f} "
              f"{r['torch_vs_fp64']:11.4f} {rest:10.1e}")  # fmt: skip
    print("\nspeed (median ms per step)")
    sets = {name: [s] for name, s in SMOLLM2.items()}
    layer = [SMOLLM2["q/o"]] * 2 + [SMOLLM2["k/v"]] * 2 + [SMOLLM2["gate/up"]] * 2
    sets[f"SmolLM2 x{args.layers} layers"] = [*layer, SMOLLM2["down"]] * args.layers
    for name, shapes in sets.items():
        ta, tb = step_time(shapes, args.reps)
        print(f"{name:>22} ({len(shapes):>2} mats): lmlab {ta * 1e3:8.1f}  torch {tb * 1e3:8.1f}  "
              f"lmlab/torch {ta / tb:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
