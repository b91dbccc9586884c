"""bootstrap_ci: coverage of a known mean, determinism, other statistics and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from lmlab.eval import bootstrap_ci, format_ci


def test_constant_values_give_a_point_interval() -> None:
    assert bootstrap_ci([2.5] * 7) == (2.5, 2.5)


def test_interval_brackets_the_mean_with_the_normal_width() -> None:
    x = np.random.default_rng(1).normal(3.0, 2.0, size=400)
    lo, hi = bootstrap_ci(x, n=2000, seed=0)
    assert lo < x.mean() < hi
    assert lo < 3.0 < hi
    normal_width = 2 * 1.96 * x.std() / np.sqrt(len(x))
    assert hi - lo == pytest.approx(normal_width, rel=0.15)


def test_seeded_and_other_statistics() -> None:
    x = [0, 1, 1, 0, 1, 1, 1, 0, 1, 1]
    assert bootstrap_ci(x, seed=3) == bootstrap_ci(x, seed=3)
    lo, hi = bootstrap_ci(x, stat=lambda v: float(np.median(v)), seed=0)
    assert 0.0 <= lo <= hi <= 1.0
    lo90, hi90 = bootstrap_ci(x, level=0.9, n=4000, seed=0)
    lo95, hi95 = bootstrap_ci(x, level=0.95, n=4000, seed=0)
    assert lo95 <= lo90 <= hi90 <= hi95
    assert format_ci(0.5, (0.25, 0.75), 2) == "0.50 [0.25, 0.75]"


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="at least one value"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci([1.0], level=1.5)
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_ci([1.0], n=0)
