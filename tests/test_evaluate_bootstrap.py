"""Bootstrap intervals over prompts, pinned to numbers computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from lineas_tl.evaluate.bootstrap import bootstrap_ci, bootstrap_means, cluster_means, percentile_interval


def test_cluster_means_average_each_prompts_samples() -> None:
    assert cluster_means([0.1, 0.3, 0.8, 0.6], per_prompt=2).tolist() == pytest.approx([0.2, 0.7])
    assert cluster_means([1.0, 2.0, 3.0]).tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="groups of 2"):
        cluster_means([1.0, 2.0, 3.0], per_prompt=2)
    with pytest.raises(ValueError, match="at least 1"):
        cluster_means([1.0], per_prompt=0)


def test_bootstrap_means_and_percentile_interval_by_hand() -> None:
    values = [0.0, 1.0, 5.0]
    draws = np.array([[0, 0, 0], [0, 1, 2], [2, 2, 1], [1, 1, 1], [2, 2, 2]])
    assert bootstrap_means(values, draws).tolist() == pytest.approx([0.0, 2.0, 11 / 3, 1.0, 5.0])
    # 5 sorted stats [0, 1, 2, 11/3, 5]: linear interpolation at q = 0.1 -> position 0.4 -> 0.4,
    # at q = 0.9 -> position 3.6 -> 11/3 + 0.6 * (5 - 11/3) = 67/15
    lo, hi = percentile_interval(bootstrap_means(values, draws), level=0.8)
    assert (lo, hi) == pytest.approx((0.4, 67 / 15))
    with pytest.raises(ValueError, match="level"):
        percentile_interval([1.0], level=1.0)


def test_bootstrap_ci_matches_the_exact_bootstrap_distribution() -> None:
    # values [0, 0, 3]: a resample's mean is K with K ~ Binomial(3, 1/3), so
    # P(0) = 8/27 (0.296), P(1) = 12/27, P(2) = 6/27, P(3) = 1/27 (0.037):
    # the 2.5% quantile is 0 and the 97.5% quantile is 3 (P(K <= 2) = 26/27 = 0.963 < 0.975).
    assert bootstrap_ci([0.0, 0.0, 3.0], n_resamples=20_000, seed=1) == (0.0, 3.0)
    # values [0, 1]: resample means 0, 1/2, 1 with probabilities 1/4, 1/2, 1/4 -> (0, 1)
    assert bootstrap_ci([0.0, 1.0], n_resamples=20_000, seed=2) == (0.0, 1.0)


def test_bootstrap_ci_is_seeded_and_handles_edge_cases() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(size=50).tolist()
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    lo, hi = bootstrap_ci(values)
    assert lo < float(np.mean(values)) < hi
    # about mean +- 1.96 sd / sqrt(n)
    half = 1.96 * np.std(values) / np.sqrt(len(values))
    assert hi - lo == pytest.approx(2 * half, rel=0.15)
    assert bootstrap_ci([0.4]) == (0.4, 0.4)
    assert all(np.isnan(bootstrap_ci([])))
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci([0.1, float("nan")])
