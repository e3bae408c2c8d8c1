"""The frontier summary and the Pareto front, on hand-made tables."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from lineas_tl.evaluate.frontier import CEILING, format_frontier, frontier_summary, pareto_front


def toy_table() -> pd.DataFrame:
    # unsteered perplexity 20: budgets +5% -> 21, +10% -> 22, +25% -> 25
    rows = [
        # method, strength, perplexity, score_out, lo, hi
        ("a", 0.0, 20.0, 0.50, 0.40, 0.60),
        ("a", 0.5, 20.8, 0.30, 0.25, 0.35),
        ("a", 1.0, 21.5, 0.20, 0.15, 0.25),
        ("a", 2.0, 30.0, 0.05, 0.01, 0.09),
        ("b", 0.0, 20.0, 0.50, 0.40, 0.60),
        ("b", 0.5, 21.0, 0.35, 0.30, 0.40),  # exactly at +5%: admissible
        ("b", 1.0, 24.0, 0.35, 0.30, 0.40),  # same score, higher perplexity: loses the tie
        ("c", 0.0, 20.0, 0.50, 0.40, 0.60),
        ("c", 1.0, 50.0, math.nan, math.nan, math.nan),  # not scored
        (CEILING, math.nan, 20.0, 0.10, 0.05, 0.15),
    ]
    return pd.DataFrame(rows, columns=["method", "strength", "perplexity", "score_out", "score_out_lo", "score_out_hi"])


def test_frontier_summary_picks_the_best_admissible_row() -> None:
    s = frontier_summary(toy_table(), budgets=(0.05, 0.10, 0.25)).set_index(["method", "budget"])
    assert set(s.index.get_level_values(0)) == {"a", "b", "c"}  # never the ceiling
    assert s.loc[("a", 0.05), ["strength", "score", "score_lo", "score_hi"]].tolist() == [0.5, 0.30, 0.25, 0.35]
    assert s.loc[("a", 0.10), "strength"] == 1.0 and s.loc[("a", 0.10), "score"] == 0.20
    assert s.loc[("a", 0.25), "strength"] == 1.0  # strength 2 costs +50%
    assert s.loc[("a", 0.10), "ppl_increase"] == pytest.approx(0.075)
    assert s.loc[("a", 0.05), "max_perplexity"] == pytest.approx(21.0)
    assert s.loc[("b", 0.05), "strength"] == 0.5 and s.loc[("b", 0.25), "strength"] == 0.5
    # a method that cannot lower the score within a budget reports the unsteered row
    assert s.loc[("c", 0.25), ["strength", "score"]].tolist() == [0.0, 0.5]


def test_calibrated_selection_reads_the_strongest_strength_before_the_budget_is_crossed() -> None:
    table = toy_table()
    # d: strength 0.5 crosses +5% before strength 1 comes back under it; "best" takes strength 1,
    # a calibration walking up the strengths stops before 0.5.
    d = [("d", 0.0, 20.0, 0.50, 0.4, 0.6), ("d", 0.5, 23.0, 0.10, 0.0, 0.2), ("d", 1.0, 21.0, 0.05, 0.0, 0.1)]
    table = pd.concat([table, pd.DataFrame(d, columns=table.columns)], ignore_index=True)
    best = frontier_summary(table, budgets=(0.05, 0.25)).set_index(["method", "budget"])
    cal = frontier_summary(table, budgets=(0.05, 0.25), select="calibrated").set_index(["method", "budget"])
    assert cal.loc[("a", 0.05), ["strength", "score"]].tolist() == [0.5, 0.30]  # 1.0 is at +7.5%
    assert cal.loc[("a", 0.25), ["strength", "score"]].tolist() == [1.0, 0.20]  # 2.0 is at +50%
    # b's strengths 0.5 and 1 tie on score: "best" keeps the cheaper, "calibrated" the stronger
    assert best.loc[("b", 0.25), "strength"] == 0.5 and cal.loc[("b", 0.25), "strength"] == 1.0
    assert cal.loc[("c", 0.25), ["strength", "score"]].tolist() == [0.0, 0.5]  # unscored ends the walk
    assert best.loc[("d", 0.05), "strength"] == 1.0
    assert cal.loc[("d", 0.05), ["strength", "score"]].tolist() == [0.0, 0.5]
    assert cal.loc[("d", 0.25), ["strength", "score", "ppl_increase"]].tolist() == [1.0, 0.05, pytest.approx(0.05)]
    with pytest.raises(ValueError, match="unknown select"):
        frontier_summary(table, select="median")


def test_cont_budget_also_bounds_the_continuations_perplexity() -> None:
    table = toy_table()
    # a's strength 1 (the +10% pick) makes its continuations 15% less likely; strength 0.5 only 4%
    table["cont_ppl_increase"] = [0.0, 0.04, 0.15, 0.9, 0.0, 0.10, 0.2, 0.0, math.nan, math.nan]
    both = frontier_summary(table, budgets=(0.10, 0.25), cont_budget=0.10).set_index(["method", "budget"])
    assert both.loc[("a", 0.10), ["strength", "score", "cont_ppl_increase"]].tolist() == [0.5, 0.30, 0.04]
    assert both.loc[("b", 0.25), "strength"] == 0.5  # exactly at +10%: admissible
    cal = frontier_summary(table, budgets=(0.25,), select="calibrated", cont_budget=0.05).set_index(["method", "budget"])
    assert cal.loc[("a", 0.25), "strength"] == 0.5  # strength 1 is over the continuations' budget: the walk stops
    assert cal.loc[("b", 0.25), "strength"] == 0.0
    # without cont_budget the table is read as before
    assert frontier_summary(table, budgets=(0.10,)).set_index("method").loc["a", "strength"] == 1.0
    with pytest.raises(ValueError, match="cont_budget must be"):
        frontier_summary(table, cont_budget=-1)
    with pytest.raises(ValueError, match="cont_ppl_increase column"):
        frontier_summary(toy_table(), cont_budget=0.1)


def test_frontier_summary_checks_its_input() -> None:
    with pytest.raises(ValueError, match="no column"):
        frontier_summary(toy_table(), column="score_in")
    with pytest.raises(ValueError, match="budgets"):
        frontier_summary(toy_table(), budgets=(-0.1,))
    with pytest.raises(ValueError, match="unsteered"):
        frontier_summary(toy_table().query("strength != 0"))


def test_format_frontier_is_one_row_per_method() -> None:
    wide = format_frontier(frontier_summary(toy_table()))
    assert wide["method"].tolist() == ["a", "b", "c"]
    assert wide.loc[0, "≤ +10% ppl"] == "0.200 [0.150, 0.250] @ 1 (+7.5% ppl)"


def test_pareto_front_is_the_running_minimum() -> None:
    points = [(20.0, 0.5), (21.0, 0.3), (20.5, 0.6), (22.0, 0.3), (25.0, 0.1), (24.0, math.nan)]
    assert pareto_front(points) == [0, 1, 4]
    assert pareto_front([]) == []
