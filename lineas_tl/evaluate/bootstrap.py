r"""95% bootstrap confidence intervals for a mean over prompts, with several samples per prompt.

Continuations of one prompt are not independent (they share the prompt), so the resampling unit
is the prompt: each of ``n_resamples`` draws picks ``n`` prompts with replacement and averages
their per-prompt means (a cluster bootstrap). The interval is the percentile interval
:math:`[q_{\alpha/2}, q_{1-\alpha/2}]` of the resampled means, :math:`\alpha = 1 - \text{level}`.
Draws use their own seeded generator, so an interval is reproducible and the global random state
is left alone.

Example:
    >>> per_prompt = cluster_means([0.1, 0.3, 0.8, 0.6], per_prompt=2)   # two prompts
    >>> bootstrap_ci(per_prompt)                                           # (lo, hi)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from jaxtyping import Float

DEFAULT_LEVEL = 0.95
DEFAULT_RESAMPLES = 2000


def cluster_means(scores: Sequence[float], per_prompt: int = 1) -> Float[np.ndarray, " n_prompts"]:
    """Per-prompt means of ``scores``, laid out prompt-major (``per_prompt`` consecutive samples each).

    Raises:
        ValueError: ``per_prompt`` < 1 or it does not divide the number of scores.
    """
    if per_prompt < 1:
        raise ValueError(f"per_prompt must be at least 1, got {per_prompt}")
    values = np.asarray(scores, dtype=np.float64)
    if values.size % per_prompt:
        raise ValueError(
            f"{values.size} scores cannot be split into groups of {per_prompt} samples per prompt; "
            "pass every prompt's samples, consecutively"
        )
    return values.reshape(-1, per_prompt).mean(axis=1)


def bootstrap_means(values: Sequence[float], indices: np.ndarray) -> Float[np.ndarray, " n_resamples"]:
    """Means of ``values`` over each row of ``indices`` (``[n_resamples, n]`` draws of positions)."""
    return np.asarray(values, dtype=np.float64)[indices].mean(axis=1)


def percentile_interval(stats: Sequence[float], level: float = DEFAULT_LEVEL) -> tuple[float, float]:
    """The central ``level`` percentile interval of ``stats`` (numpy's linear interpolation)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    alpha = 1.0 - level
    lo, hi = np.quantile(np.asarray(stats, dtype=np.float64), [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def bootstrap_ci(
    values: Sequence[float],
    *,
    level: float = DEFAULT_LEVEL,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (one value per resampling unit).

    A single value gives the degenerate interval ``(v, v)``; no values give ``(nan, nan)``.
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return math.nan, math.nan
    if not np.isfinite(data).all():
        raise ValueError("bootstrap_ci got a NaN or infinite value")
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, data.size, size=(n_resamples, data.size))
    return percentile_interval(bootstrap_means(data, indices), level)


__all__ = [
    "DEFAULT_LEVEL",
    "DEFAULT_RESAMPLES",
    "bootstrap_ci",
    "bootstrap_means",
    "cluster_means",
    "percentile_interval",
]
