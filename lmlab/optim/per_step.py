"""Per-step Newton–Schulz coefficients: one minimax quintic per step, fitted to the interval of
singular values that step's input can have (the idea of Polar Express, Amsel et al. 2025, and of
the Remez-style schedules of Grishina et al. 2025; this derivation is lmlab's own).

After Frobenius normalization every singular value lies in [l, 1] for a chosen lower bound l. Step
t takes the interval [l_t, u_t] its input can have and picks the odd quintic
p_t(x) = a x + b x^3 + c x^5 minimizing max |p_t(x) - 1| over it; the next interval is the image
p_t([l_t, u_t]) = [l_{t+1}, u_{t+1}]. Greedy step by step this shrinks the worst case
|σ - 1| faster than one fixed quintic does, at the same matrix-product count.

The minimax fit is a Remez exchange. {x, x^3, x^5} is a Chebyshev system on (0, ∞), so the best fit
of the constant 1 equioscillates on four points: both ends of the interval and the two interior
critical points of p, which are the roots of p'(x) = a + 3b x^2 + 5c x^4 (a quadratic in x^2).
Each exchange solves a 4x4 linear system for (a, b, c, E) with p(x_i) - 1 = ±E on the current
points, then moves the interior points to p's critical points.

Two tweaks keep the schedule safe in bf16, where rounding puts singular values slightly outside the
interval a step was fitted for (both are parameters, defaults measured in `muon-coefficients`):

- `cushion`: fit step t on [max(l_t, cushion · u_t), u_t]. For tiny l_t the exact minimax quintic
  has a huge slope p'(0) and a deep, narrow dip; rounded inputs just outside it are thrown far.
  The cushion caps the slope; values below the cushion still grow (p is increasing there).
- `safety`: every step except the last is fitted on [l_t, (1 + safety) · u_t], so a value a little
  above u_t (rounding) still lands inside the next interval instead of on the steep rise past it.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from lmlab.errors import InputError

Coeffs = tuple[float, float, float]
# the schedule `orthogonalize(coeffs="per-step")` and `Muon(ns_coeffs="per-step")` use
PER_STEP = dict(lower=1e-3, cushion=0.02, safety=0.01)
# the limit of the minimax fit as the interval shrinks to {1}: p(1) = 1, p'(1) = p''(1) = 0
NEAR_ONE = (15 / 8, -10 / 8, 3 / 8)
SIGNS = np.array([-1.0, 1.0, -1.0, 1.0])  # error signs at l, local max, local min, u


def quintic_critical_points(coeffs: Coeffs) -> np.ndarray:
    """Positive real x with p'(x) = a + 3b x^2 + 5c x^4 = 0, ascending."""
    a, b, c = coeffs
    roots = np.roots([5 * c, 3 * b, a]) if c != 0 else np.array([-a / (3 * b)])
    y = np.real(roots[np.abs(np.imag(roots)) < 1e-12])
    return np.sort(np.sqrt(y[y > 0]))


def _p(x: np.ndarray | float, coeffs: Coeffs) -> np.ndarray | float:
    a, b, c = coeffs
    x2 = x * x
    return x * (a + x2 * (b + c * x2))


def interval_image(coeffs: Coeffs, lo: float, hi: float) -> tuple[float, float]:
    """Exact (min, max) of p over [lo, hi]: the ends and the critical points inside."""
    xs = [lo, hi, *[x for x in quintic_critical_points(coeffs) if lo < x < hi]]
    ys = [float(_p(x, coeffs)) for x in xs]
    return min(ys), max(ys)


def minimax_quintic(
    lo: float, hi: float, iters: int = 100, tol: float = 1e-13
) -> tuple[Coeffs, float]:
    """The odd quintic minimizing max |p(x) - 1| over [lo, hi] and that error (Remez exchange)."""
    if not 0 < lo < hi:
        raise InputError(f"minimax_quintic needs 0 < lo < hi, got lo={lo}, hi={hi}")
    # start from Chebyshev extrema of the interval
    pts = lo + (hi - lo) * 0.5 * (1 - np.cos(np.pi * np.arange(4) / 3))
    coeffs, err = (0.0, 0.0, 0.0), 0.0
    for _ in range(iters):
        A = np.stack([pts, pts**3, pts**5, -SIGNS], axis=1)
        a, b, c, err = np.linalg.solve(A, np.ones(4))
        coeffs = (float(a), float(b), float(c))
        crit = [x for x in quintic_critical_points(coeffs) if lo < x < hi]
        if len(crit) != 2:  # no interior extrema: not a valid reference (raised below)
            break
        new = np.array([lo, crit[0], crit[1], hi])
        if np.max(np.abs(new - pts)) <= tol * hi:
            pts = new
            break
        pts = new
    worst = _worst(coeffs, lo, hi)
    if len(crit) != 2 or worst > abs(err) * (1 + 1e-6) + 1e-12:
        raise ArithmeticError(
            f"Remez did not equioscillate on [{lo}, {hi}] (levelled error {err:.3g}, worst {worst:.3g})"
        )
    return coeffs, worst


def _worst(coeffs: Coeffs, lo: float, hi: float) -> float:
    mn, mx = interval_image(coeffs, lo, hi)
    return max(1 - mn, mx - 1)


def per_step_schedule(
    steps: int = 5, lower: float = 1e-3, cushion: float = 0.0, safety: float = 0.0
) -> tuple[Coeffs, ...]:
    """`steps` quintics, step t minimax on the interval its input can have (see module doc)."""
    if steps < 1:
        raise InputError(f"per_step_schedule steps={steps} must be >= 1")
    if not 0 < lower < 1:
        raise InputError(
            f"per_step_schedule lower={lower}: the lower singular-value bound must be in (0, 1)"
        )
    if not (0 <= cushion < 1 and 0 <= safety < 1):
        raise InputError(
            f"per_step_schedule cushion={cushion}, safety={safety}: both must be in [0, 1)"
        )
    return _schedule(steps, float(lower), float(cushion), float(safety))


@lru_cache(maxsize=64)
def _schedule(steps: int, lower: float, cushion: float, safety: float) -> tuple[Coeffs, ...]:
    lo, hi = lower, 1.0
    out: list[Coeffs] = []
    for t in range(steps):
        s = 1.0 + (safety if t < steps - 1 else 0.0)
        fit_lo = max(lo, cushion * hi)
        # below ~1e-4 relative width the 4x4 Remez system is singular in float64; the fit has
        # converged to its limit there
        coeffs = NEAR_ONE if hi * s - fit_lo < 1e-4 else minimax_quintic(fit_lo, hi * s)[0]
        out.append(coeffs)
        lo, hi = interval_image(coeffs, lo, hi)
    return tuple(out)


def schedule_image(
    schedule: tuple[Coeffs, ...] | list[Coeffs], lo: float, hi: float = 1.0
) -> tuple[float, float]:
    """Exact image of [lo, hi] after applying the schedule's quintics in order."""
    for coeffs in schedule:
        lo, hi = interval_image(tuple(coeffs), lo, hi)
    return lo, hi
