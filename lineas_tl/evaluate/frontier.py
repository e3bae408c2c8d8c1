r"""The frontier summary: each method's best concept score within a perplexity budget.

For a budget :math:`\beta` (e.g. +5%), a row of the strength sweep is *admissible* when its
perplexity is at most :math:`(1 + \beta)\,\text{PPL}_0`, with :math:`\text{PPL}_0` the unsteered
model's. A method's entry is its admissible row with the lowest concept score (ties: the lower
perplexity, then the lower strength). The unsteered row (strength 0) is always admissible, so a
method that cannot lower the score within a budget reports the unsteered score there. Scores are
oriented so that lower is better (a concept to induce is scored as ``1 - score``).

Taking the lowest of a method's noisy scores favours the methods with more strengths inside the
budget (the minimum of more noisy draws is lower). ``select="calibrated"`` reads each method at
the strength chosen by perplexity alone, as :meth:`~lineas_tl.HookedSteerer.calibrate` would on
the sweep's grid: the strongest strength before the first one over the budget. Its score is not
selected on its own noise.

Reference-text perplexity cannot see what steering does to the steered continuations themselves.
``cont_budget`` adds a second budget on ``cont_ppl_increase`` (the held-out continuations'
perplexity under the unsteered model, relative to the unsteered model's own continuations; see
:mod:`lineas_tl.evaluate.fluency`): a row is admissible only within both.

Example:
    >>> summary = frontier_summary(table, budgets=(0.05, 0.10, 0.25))
    >>> print(format_frontier(summary))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

DEFAULT_BUDGETS: tuple[float, ...] = (0.05, 0.10, 0.25)
"""Perplexity budgets of the summary: +5%, +10% and +25% over the unsteered model."""
CEILING = "ceiling"
"""``method`` of the table's ceiling row (the unsteered model on the target prompts)."""

_REL_TOL = 1e-9  # a row at exactly the budget is admissible despite float rounding
SELECTIONS: tuple[str, ...] = ("best", "calibrated")


def unsteered_perplexity(table: Any) -> float:
    """The unsteered model's perplexity: the rows at strength 0 (all equal)."""
    base = table.loc[(table["strength"] == 0) & (table["method"] != CEILING), "perplexity"]
    if base.empty:
        raise ValueError("the table has no unsteered row (strength 0): the budgets are relative to it")
    return float(base.iloc[0])


def frontier_summary(
    table: Any,
    budgets: Sequence[float] = DEFAULT_BUDGETS,
    column: str = "score_out",
    select: str = "best",
    cont_budget: float | None = None,
) -> Any:
    """Per method and budget, the best ``column`` score within the perplexity budget.

    Args:
        table: a :func:`~lineas_tl.evaluate.compare` table (``method``, ``strength``,
            ``perplexity``, ``column`` and, if present, ``{column}_lo`` / ``{column}_hi``).
        budgets: relative perplexity increases, e.g. ``0.05`` for +5%.
        column: the score to minimise (``"score_out"``: held-out prompts; ``"score_in"``: fit prompts).
        select: ``"best"``: the admissible row with the lowest score; ``"calibrated"``: going up
            the strengths from 0, the last row before the first over the budget (by perplexity
            alone; a row over the budget, or not scored, ends the walk).
        cont_budget: if given (e.g. ``0.10``), a row is admissible only when its
            ``cont_ppl_increase`` is at most this too (``"calibrated"``: a row over it ends the walk).

    Returns:
        a pandas ``DataFrame``, one row per (method, budget): ``method``, ``budget``,
        ``max_perplexity``, ``strength``, ``score``, ``score_lo``, ``score_hi``, ``perplexity``,
        ``ppl_increase`` (relative to unsteered), and ``cont_ppl`` (its interval ``cont_ppl_lo`` /
        ``cont_ppl_hi``, and ``cont_ppl_increase``): the held-out continuations' perplexity under the
        unsteered model (NaN when the table has none; see :mod:`lineas_tl.evaluate.fluency`).
    """
    import pandas as pd

    if not budgets or any(not (b >= 0 and math.isfinite(b)) for b in budgets):
        raise ValueError(f"budgets must be non-negative numbers, got {list(budgets)}")
    if column not in table:
        raise ValueError(f"the table has no column {column!r}")
    if select not in SELECTIONS:
        raise ValueError(f"unknown select {select!r}; choose one of {SELECTIONS}")
    if cont_budget is not None:
        if not (cont_budget >= 0 and math.isfinite(cont_budget)):
            raise ValueError(f"cont_budget must be a non-negative number, got {cont_budget!r}")
        if "cont_ppl_increase" not in table:
            raise ValueError("cont_budget needs the table's cont_ppl_increase column: run compare with continuation perplexity")
    within_cont = None  # rows within the continuations' budget (the unsteered row always is)
    if cont_budget is not None:
        within_cont = (table["strength"] == 0) | (table["cont_ppl_increase"] <= cont_budget + _REL_TOL)
    base = unsteered_perplexity(table)
    rows = []
    for method, group in table[table["method"] != CEILING].groupby("method", sort=False):
        scored = group[group[column].notna() & group["perplexity"].notna()]
        for budget in budgets:
            limit = (1 + budget) * base
            admissible = group["perplexity"] <= limit * (1 + _REL_TOL)
            if within_cont is not None:
                admissible &= within_cont[group.index]
            if select == "calibrated":
                ok = _before_first_over(group, admissible, column)
            else:
                ok = scored[admissible[scored.index]]
            row: dict[str, Any] = {"method": method, "budget": float(budget), "max_perplexity": limit}
            if ok.empty:
                row.update(strength=math.nan, score=math.nan, score_lo=math.nan, score_hi=math.nan,
                           perplexity=math.nan, ppl_increase=math.nan, cont_ppl=math.nan, cont_ppl_lo=math.nan,
                           cont_ppl_hi=math.nan, cont_ppl_increase=math.nan)  # fmt: skip
            else:
                order = [column, "perplexity", "strength"] if select == "best" else ["strength"]
                best = ok.sort_values(order, ascending=select == "best", kind="stable").iloc[0]
                row.update(
                    strength=float(best["strength"]),
                    score=float(best[column]),
                    score_lo=float(best.get(f"{column}_lo", math.nan)),
                    score_hi=float(best.get(f"{column}_hi", math.nan)),
                    perplexity=float(best["perplexity"]),
                    ppl_increase=float(best["perplexity"]) / base - 1,
                    **{k: float(best.get(k, math.nan)) for k in ("cont_ppl", "cont_ppl_lo", "cont_ppl_hi", "cont_ppl_increase")},
                )
            rows.append(row)
    columns = ["method", "budget", "max_perplexity", "strength", "score", "score_lo", "score_hi",
               "perplexity", "ppl_increase", "cont_ppl", "cont_ppl_lo", "cont_ppl_hi", "cont_ppl_increase"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def _before_first_over(group: Any, admissible: Any, column: str) -> Any:
    """The rows of one method, by strength, up to (not including) the first not ``admissible`` or unscored."""
    rows = group.sort_values("strength", kind="stable")
    over = ~(admissible[rows.index] & rows[column].notna()).to_numpy()
    stop = int(over.argmax()) if over.any() else len(rows)
    return rows.iloc[:stop]


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the ``(perplexity, score)`` points no other point beats on both, by perplexity.

    A point is kept when its score is strictly lower than that of every point with a lower or
    equal perplexity (the running minimum of the score as the budget grows).
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    kept, best = [], math.inf
    for i in order:
        ppl, score = points[i]
        if math.isfinite(ppl) and math.isfinite(score) and score < best:
            kept.append(i)
            best = score
    return kept


def format_frontier(summary: Any, digits: int = 3) -> Any:
    """The summary as a wide table: one row per method, one column per budget.

    Each cell reads ``score [lo, hi] @ strength (+x% ppl)``.
    """
    import pandas as pd

    def cell(r: Any) -> str:
        if not math.isfinite(r["score"]):
            return "n/a"
        ci = f" [{r['score_lo']:.{digits}f}, {r['score_hi']:.{digits}f}]" if math.isfinite(r["score_lo"]) else ""
        cont = r.get("cont_ppl_increase", math.nan)
        cont_s = f", {100 * cont:+.1f}% cont. ppl" if cont == cont else ""
        return f"{r['score']:.{digits}f}{ci} @ {r['strength']:g} ({100 * r['ppl_increase']:+.1f}% ppl{cont_s})"

    wide: dict[str, dict[str, str]] = {}
    for _, r in summary.iterrows():
        wide.setdefault(r["method"], {})[f"≤ +{100 * r['budget']:g}% ppl"] = cell(r)
    out = pd.DataFrame.from_dict(wide, orient="index")
    out.index.name = "method"
    return out.reset_index()


__all__ = ["CEILING", "DEFAULT_BUDGETS", "SELECTIONS", "format_frontier", "frontier_summary", "pareto_front", "unsteered_perplexity"]
