"""Quintic Newton–Schulz orthogonalization and a numerical derivation of its coefficients.

One step maps X -> a X + b (X X^T) X + c (X X^T)^2 X. On the SVD X = U S V^T this applies the odd
polynomial p(s) = a s + b s^3 + c s^5 to every singular value and keeps U, V; five steps apply
p∘p∘p∘p∘p. After Frobenius normalization every singular value lies in (0, 1], so choosing (a, b, c)
is a question about a scalar map on [eps, 1]: grow small values fast (slope a at 0) and land
everything near 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lmlab.errors import InputError
from lmlab.optim.per_step import PER_STEP, per_step_schedule

KELLER = (3.4445, -4.7750, 2.0315)  # Keller Jordan's Muon coefficients
Coeffs = tuple[float, float, float]
SCHEDULES = ("keller", "per-step")  # names `orthogonalize(coeffs=...)` and Muon accept


# ---------------------------------------------------------------------------- the matrix iteration


def resolve_coeffs(coeffs: Coeffs | Sequence[Coeffs] | str, steps: int) -> tuple[Coeffs, ...]:
    """One (a, b, c) per step from a name ("keller", "per-step"), one triple (every step) or a
    sequence of exactly `steps` triples (step t uses the t-th)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(
            f"Newton–Schulz steps={steps!r} must be an integer >= 1 (5 is the default)"
        )
    if isinstance(coeffs, str):
        if coeffs == "keller":
            return (KELLER,) * steps
        if coeffs == "per-step":
            return per_step_schedule(steps, **PER_STEP)
        raise InputError(
            f"unknown Newton–Schulz coefficients {coeffs!r}; use one of {', '.join(SCHEDULES)}, "
            "an (a, b, c) triple or one triple per step"
        )
    items = list(coeffs)
    if len(items) == 3 and all(_is_number(v) for v in items):
        return (tuple(float(v) for v in items),) * steps  # type: ignore[return-value]
    triples = [tuple(t) if isinstance(t, Sequence) else () for t in items]
    if not all(len(t) == 3 and all(_is_number(v) for v in t) for t in triples):
        raise InputError(
            f"Newton–Schulz coeffs={coeffs!r} is neither an (a, b, c) triple nor a sequence of "
            "triples; pass e.g. (3.4445, -4.775, 2.0315) or one such triple per step"
        )
    if len(triples) != steps:
        raise InputError(
            f"got {len(triples)} per-step Newton–Schulz triples for steps={steps}; pass exactly "
            "one triple per step (or set steps to their number)"
        )
    return tuple(tuple(float(v) for v in t) for t in triples)  # type: ignore[return-value]


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)


def orthogonalize(
    G: torch.Tensor,
    steps: int = 5,
    coeffs: Coeffs | Sequence[Coeffs] | str = KELLER,
    dtype: torch.dtype = torch.bfloat16,
    eps: float = 1e-7,
) -> torch.Tensor:
    """Approximate U V^T of `G` [..., m, n] by `steps` quintic Newton–Schulz steps in `dtype`.

    `coeffs` is one (a, b, c) for every step (Keller's by default), one triple per step, or a name:
    "keller" or "per-step" (minimax quintics fitted to each step's interval, `lmlab.optim.per_step`).
    """
    if G.ndim < 2:
        raise ValueError(
            f"orthogonalize needs a matrix or a batch of matrices, got shape {tuple(G.shape)}; "
            "reshape 1-D parameters or optimize them with AdamW"
        )
    schedule = resolve_coeffs(coeffs, steps)
    X = G.to(dtype)
    tall = G.shape[-2] > G.shape[-1]
    if tall:  # iterate on the wide side so X X^T is the smaller Gram matrix
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + eps)
    for a, b, c in schedule:
        A = X @ X.mT
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    if tall:
        X = X.mT
    return X.to(G.dtype)


def polar_reference(G: torch.Tensor) -> torch.Tensor:
    """Exact U V^T of `G` by a float64 SVD (the target Newton–Schulz approximates)."""
    U, _, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    return U @ Vh


# ---------------------------------------------------------------------------- the scalar map


def quintic(x: np.ndarray | float, coeffs: Coeffs = KELLER) -> np.ndarray | float:
    """p(x) = a x + b x^3 + c x^5: what one step does to each singular value."""
    a, b, c = coeffs
    x2 = x * x
    return x * (a + x2 * (b + c * x2))


def iterate(
    x: np.ndarray | float, coeffs: Coeffs | Sequence[Coeffs] | str = KELLER, steps: int = 5
) -> np.ndarray | float:
    """The `steps`-fold composition p∘…∘p applied to `x` (float64); `coeffs` as `orthogonalize`
    takes it (one triple, one per step, or a name)."""
    y = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        for step in resolve_coeffs(coeffs, steps):
            y = quintic(y, step)
    return y


def image(
    coeffs: Coeffs = KELLER, lo: float = 0.01, hi: float = 1.0, steps: int = 5, n: int = 200_001
):
    """(min, max) of the `steps`-fold map over a dense grid of [lo, hi] (log-spaced, then linear)."""
    x = dense_grid(lo, hi, n)
    y = iterate(x, coeffs, steps)
    return float(y.min()), float(y.max())


def dense_grid(lo: float, hi: float, n: int) -> np.ndarray:
    """`n` points covering [lo, hi]: half log-spaced (small singular values), half linear."""
    if not 0 < lo < hi:
        raise ValueError(f"need 0 < lo < hi for a singular-value interval, got lo={lo}, hi={hi}")
    return np.unique(
        np.concatenate([np.geomspace(lo, hi, n // 2), np.linspace(lo, hi, n - n // 2)])
    )


# ---------------------------------------------------------------------------- the coefficient search


@dataclass(frozen=True)
class Objective:
    """Maximize the slope a = p'(0) subject to: for every x in [eps, 1], the `steps`-fold map
    lands in [lo, hi]. Among the (b, c) that achieve the largest feasible a, take the one with the
    most slack (the smallest worst-case violation of the band)."""

    eps: float = 0.01
    lo: float = 0.72
    hi: float = 1.134
    steps: int = 5

    def __post_init__(self) -> None:
        if not (0 < self.eps < 1 and 0 < self.lo < 1 < self.hi and self.steps >= 1):
            raise ValueError(
                f"Objective(eps={self.eps}, lo={self.lo}, hi={self.hi}, steps={self.steps}) needs "
                "0 < eps < 1, 0 < lo < 1 < hi and steps >= 1"
            )


@dataclass
class SearchResult:
    coeffs: Coeffs
    margin: float  # max violation of the band on the search grid; <= 0 means feasible
    objective: Objective
    evaluations: int


def _search_grid(obj: Objective, n: int = 600) -> np.ndarray:
    return np.concatenate(
        [np.geomspace(obj.eps, 0.2, n // 2, endpoint=False), np.linspace(0.2, 1.0, n - n // 2)]
    )


def band_margin(coeffs: Coeffs, obj: Objective, x: np.ndarray | None = None) -> float:
    """Worst-case violation max(lo - min φ(x), max φ(x) - hi) over [eps, 1]; <= 0 is feasible."""
    y = iterate(_search_grid(obj) if x is None else x, coeffs, obj.steps)
    m = max(obj.lo - y.min(), y.max() - obj.hi)
    return float(m) if np.isfinite(m) else 1e9


def _grid_margins(
    a: float, bs: np.ndarray, cs: np.ndarray, x: np.ndarray, obj: Objective
) -> np.ndarray:
    """Band margins for every (b, c) of a grid at slope `a`, vectorized: [len(bs), len(cs)]."""
    b = bs[:, None, None]
    c = cs[None, :, None]
    y = np.broadcast_to(x, (len(bs), len(cs), len(x))).copy()
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(obj.steps):
            y2 = y * y
            y = y * (a + y2 * (b + c * y2))
        m = np.maximum(obj.lo - y.min(-1), y.max(-1) - obj.hi)
    return np.where(np.isfinite(m), m, 1e9)


def nelder_mead(
    f, x0: np.ndarray, step: float = 0.05, iters: int = 200
) -> tuple[np.ndarray, float, int]:
    """Minimize `f` from `x0` with the Nelder–Mead simplex (reflect 1, expand 2, contract 1/2)."""
    pts = [np.asarray(x0, float)] + [np.asarray(x0, float) + step * e for e in np.eye(len(x0))]
    vals = [f(p) for p in pts]
    evals = len(pts)
    for _ in range(iters):
        order = np.argsort(vals)
        pts, vals = [pts[i] for i in order], [vals[i] for i in order]
        centre = np.mean(pts[:-1], axis=0)
        xr = 2 * centre - pts[-1]
        fr = f(xr)
        evals += 1
        if fr < vals[0]:
            xe = 3 * centre - 2 * pts[-1]
            fe = f(xe)
            evals += 1
            pts[-1], vals[-1] = (xe, fe) if fe < fr else (xr, fr)
        elif fr < vals[-2]:
            pts[-1], vals[-1] = xr, fr
        else:
            xc = centre + 0.5 * (pts[-1] - centre)
            fc = f(xc)
            evals += 1
            if fc < vals[-1]:
                pts[-1], vals[-1] = xc, fc
            else:  # shrink towards the best point
                pts = [pts[0] + 0.5 * (p - pts[0]) for p in pts]
                vals = [vals[0]] + [f(p) for p in pts[1:]]
                evals += len(pts) - 1
    i = int(np.argmin(vals))
    return pts[i], float(vals[i]), evals


def find_coefficients(
    obj: Objective = Objective(),
    a_range: tuple[float, float] = (3.0, 4.0),
    b_range: tuple[float, float] = (-7.0, -2.0),
    c_range: tuple[float, float] = (0.5, 4.0),
    grid_step: float = 0.04,
    a_step: float = 0.04,
    progress: bool = False,
) -> SearchResult:
    """Solve `obj` numerically: a coarse (a, b, c) grid finds the largest feasible slope, then
    bisection on a with a Nelder–Mead search over (b, c) (minimizing the band margin) refines it."""
    x = _search_grid(obj)
    bs = np.arange(b_range[0], b_range[1] + 1e-9, grid_step)
    cs = np.arange(c_range[0], c_range[1] + 1e-9, grid_step)
    a_grid = np.arange(a_range[0], a_range[1] + 1e-9, a_step)
    evals, best = 0, None
    it = a_grid
    if progress:
        from tqdm import tqdm

        it = tqdm(a_grid, desc="coefficient grid", leave=False)
    for a in it:  # coarse stage: keep the largest a with a feasible (b, c) on the grid
        m = _grid_margins(float(a), bs, cs, x, obj)
        evals += m.size
        i, j = np.unravel_index(np.argmin(m), m.shape)
        if m[i, j] <= 0:
            best = (float(a), np.array([bs[i], cs[j]]), float(m[i, j]))
    if best is None:
        raise ValueError(
            f"no coefficients in a∈{a_range}, b∈{b_range}, c∈{c_range} satisfy {obj}; "
            "widen the band (lower lo / raise hi) or raise eps"
        )

    def inner(a: float, start: np.ndarray) -> tuple[np.ndarray, float]:
        nonlocal evals
        bc, v, n = nelder_mead(lambda bc: band_margin((a, bc[0], bc[1]), obj, x), start)
        evals += n
        return bc, v

    a_lo, bc_lo, _ = best
    bc_lo, m_lo = inner(a_lo, bc_lo)
    a_hi = a_lo + a_step
    for _ in range(20):  # bisection: a_lo stays feasible, a_hi infeasible (or untested)
        mid = 0.5 * (a_lo + a_hi)
        bc, v = inner(mid, bc_lo)
        if v <= 0:
            a_lo, bc_lo, m_lo = mid, bc, v
        else:
            a_hi = mid
    coeffs = (float(a_lo), float(bc_lo[0]), float(bc_lo[1]))
    return SearchResult(coeffs, m_lo, obj, evals)


# ---------------------------------------------------------------------------- symmetric-band search


def symmetric_objective(delta: float, eps: float = 0.01, steps: int = 5) -> Objective:
    """The band [1 - delta, 1 + delta] around 1 for every x in [eps, 1] after `steps` steps."""
    if not 0 < delta < 1:
        raise ValueError(
            f"delta={delta}: a symmetric band [1 - delta, 1 + delta] needs 0 < delta < 1"
        )
    return Objective(eps, 1.0 - delta, 1.0 + delta, steps)


def _zoom_min_margin(
    a: float,
    obj: Objective,
    x: np.ndarray,
    centre: tuple[float, float],
    half: tuple[float, float],
    n: int = 33,
    zooms: int = 5,
) -> tuple[np.ndarray, float, int]:
    """Smallest band margin over (b, c) at slope `a`: an n x n grid, re-centred and shrunk 4x each zoom."""
    (cb, cc), (hb, hc) = centre, half
    best, evals = (np.array([cb, cc]), np.inf), 0
    for _ in range(zooms):
        bs, cs = np.linspace(cb - hb, cb + hb, n), np.linspace(cc - hc, cc + hc, n)
        m = _grid_margins(a, bs, cs, x, obj)
        evals += m.size
        i, j = np.unravel_index(np.argmin(m), m.shape)
        if m[i, j] < best[1]:
            best = (np.array([bs[i], cs[j]]), float(m[i, j]))
        cb, cc = best[0]
        hb, hc = hb / 4, hc / 4
    return best[0], best[1], evals


def max_slope(
    obj: Objective,
    a_range: tuple[float, float] = (2.0, 5.0),
    a_step: float = 0.1,
    b_range: tuple[float, float] = (-14.0, 0.0),
    c_range: tuple[float, float] = (0.0, 9.0),
    safety: float = 2e-4,
    n_x: int = 1000,
    tol: float = 1e-4,
) -> SearchResult:
    """Largest slope a = p'(0) whose (b, c) keep the `obj.steps`-fold map of [eps, 1] inside
    [lo + safety, hi - safety] on an `n_x`-point grid: an a-scan with zoomed (b, c) grids, then
    bisection on a (to `tol`). The safety margin covers the gaps between grid points."""
    x = _search_grid(obj, n_x)
    centre = (0.5 * sum(b_range), 0.5 * sum(c_range))
    half = (0.5 * (b_range[1] - b_range[0]), 0.5 * (c_range[1] - c_range[0]))
    evals, best = 0, None
    for a in np.arange(a_range[0], a_range[1] + 1e-9, a_step):
        bc, m, n = _zoom_min_margin(float(a), obj, x, centre, half, n=31, zooms=3)
        evals += n
        if m <= -safety:
            best = (float(a), bc, m)
    if best is None:
        raise ValueError(
            f"no coefficients with a in {a_range}, b in {b_range}, c in {c_range} satisfy {obj}; "
            "widen the band, raise eps or allow more steps"
        )
    a_lo, bc_lo, m_lo = best
    local = (0.5, 0.5)
    bc_lo, m_lo, n = _zoom_min_margin(a_lo, obj, x, tuple(bc_lo), local, zooms=6)
    evals += n
    for _ in range(100):  # bisect on [a_lo, a_lo + a_step]; the coarse scan can miss a thin
        top = a_hi = a_lo + a_step  # feasible set, so a bracket whose top is reached moves up
        while a_hi - a_lo > tol:
            mid = 0.5 * (a_lo + a_hi)
            bc, m, n = _zoom_min_margin(mid, obj, x, tuple(bc_lo), local, zooms=6)
            evals += n
            if m <= -safety:
                a_lo, bc_lo, m_lo = mid, bc, m
            else:
                a_hi = mid
        if top - a_lo > 2 * tol:
            break
        bc, m, n = _zoom_min_margin(top, obj, x, tuple(bc_lo), local, zooms=6)
        evals += n
        if m > -safety:
            break
        a_lo, bc_lo, m_lo = top, bc, m
    return SearchResult((float(a_lo), float(bc_lo[0]), float(bc_lo[1])), m_lo, obj, evals)


def reach(
    coeffs: Coeffs, lo: float, hi: float, steps: int = 5, x_min: float = 1e-6, n: int = 200_001
) -> float:
    """Smallest x0 such that the `steps`-fold map sends every grid point of [x0, 1] into [lo, hi]
    (1.0 when even x = 1 misses the band)."""
    x = dense_grid(x_min, 1.0, n)
    y = iterate(x, coeffs, steps)
    bad = np.flatnonzero(~((y >= lo) & (y <= hi)))
    if len(bad) == 0:
        return float(x[0])
    return float(x[bad[-1] + 1]) if bad[-1] + 1 < len(x) else 1.0


def tightest_band(coeffs: Coeffs, eps: float = 0.01, steps: int = 5) -> float:
    """The smallest delta with the `steps`-fold map of [eps, 1] inside [1 - delta, 1 + delta]."""
    lo, hi = image(coeffs, eps, 1.0, steps)
    return max(1.0 - lo, hi - 1.0)


def sv_errors(out: torch.Tensor) -> dict[str, float]:
    """Orthogonality errors of a (batch of) matrix: worst / median |sigma - 1| and ||O O^T - I||_2."""
    sv = torch.linalg.svdvals(out.double()).flatten()
    dev = (sv - 1).abs()
    return {
        "worst": float(dev.max()),
        "median": float(dev.median()),
        "mean": float(dev.mean()),
        "gram": float((sv * sv - 1).abs().max()),  # ||O O^T - I||_2 on the smaller side
    }
