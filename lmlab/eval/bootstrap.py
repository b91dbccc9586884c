"""Percentile bootstrap confidence intervals for small evaluation sets."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def mean(values: np.ndarray) -> float:
    """Arithmetic mean of a 1-D array (the default bootstrap statistic)."""
    return float(np.mean(values))


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    stat: Callable[[np.ndarray], float] = mean,
    n: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval (lo, hi) of `stat` over `values` resampled with replacement.

    For paired comparisons pass the per-item differences (steered - unsteered). Values may be
    rows of a 2-D array (resampled together) when `stat` takes the whole array.
    """
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    if not 0 < level < 1:
        raise ValueError(f"level {level} must be between 0 and 1")
    if n < 1:
        raise ValueError(f"n={n} resamples; need at least 1")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n, len(x)))
    stats = np.array([stat(x[i]) for i in idx])
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(stats, [tail, 100 - tail])
    return float(lo), float(hi)


def format_ci(value: float, ci: tuple[float, float], digits: int = 3) -> str:
    """`value [lo, hi]` with the given number of decimals."""
    return f"{value:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
