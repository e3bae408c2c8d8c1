"""Which strengths a sweep visits, and in which order (coarse to fine, so a cut-short sweep is balanced)."""

from __future__ import annotations

from collections.abc import Sequence

from lineas_tl.evaluate.variants import base_method

DEFAULT_METHODS: tuple[str, ...] = ("lineas", "linear_act", "mean_act", "caa", "iti", "actadd")
"""LinEAS and every baseline, in the order tables and plots list them."""
DEFAULT_STRENGTHS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))
"""0, 0.1, ..., 1: the paper's ``linspace(0, 1, 11)``."""
DISTRIBUTION_MATCH: frozenset[str] = frozenset({"lineas", "linear_act", "mean_act"})
"""Methods whose fit is a distribution match (strength 1 = source moved onto target): they are
also swept past 1, over ``extra_strengths``, to show whether more of the map helps or over-steers."""
EXTRA_STRENGTHS: tuple[float, ...] = (1.25, 1.5, 1.75, 2.0)


def strength_grid(method: str, strengths: Sequence[float], extra_strengths: Sequence[float]) -> list[float]:
    """The strengths swept for ``method``: 0, ``strengths``, and ``extra_strengths`` for a
    :data:`DISTRIBUTION_MATCH` method (gated or not); sorted, without duplicates."""
    grid = {0.0, *map(float, strengths)}
    if base_method(method) in DISTRIBUTION_MATCH:
        grid |= set(map(float, extra_strengths))
    return sorted(grid)


def coarse_to_fine(grid: Sequence[float]) -> list[float]:
    """The non-zero strengths of ``grid`` in the order a sweep visits them.

    Strengths up to 1 come first, each the one farthest from those already visited (0 counts as
    visited; ties go to the smaller strength): 1, 0.5, 0.2, 0.8, ... Strengths past 1 follow in
    increasing order. Cut short at any point, the sweep has covered [0, 1] evenly.
    """
    inside = sorted(s for s in set(grid) if 0 < s <= 1)
    chosen, order = [0.0], []
    while inside:
        best = max(inside, key=lambda s: (round(min(abs(s - c) for c in chosen), 9), -s))
        inside.remove(best)
        chosen.append(best)
        order.append(best)
    return order + sorted(s for s in set(grid) if s > 1)


def sweep_jobs(methods: Sequence[str], grids: dict[str, list[float]]) -> list[tuple[str, float]]:
    """``(method, strength)`` pairs in rounds: every method's first strength, then every second, ..."""
    orders = {m: coarse_to_fine(grids[m]) for m in methods}
    rounds = max((len(o) for o in orders.values()), default=0)
    return [(m, orders[m][r]) for r in range(rounds) for m in methods if r < len(orders[m])]


__all__ = [
    "DEFAULT_STRENGTHS",
    "DISTRIBUTION_MATCH",
    "EXTRA_STRENGTHS",
    "coarse_to_fine",
    "strength_grid",
    "sweep_jobs",
]
