"""Issue 19's tables from the gate runs' ``comparison.csv`` files: `results/gate/RESULTS.md`.

    python results/gate/summarize.py                      # reads results/gate/full/<concept>/
    python results/gate/summarize.py --root /tmp/gq       # any run_gate_results.py output

For each concept: the frontier (best held-out score within +5/+10/+25% reference perplexity), the
calibrated view, and the frontier within both budgets (the reference budget and the continuations'
perplexity within +10%), plain and gated rows together; then, per method and budget, gated minus
plain with a verdict that only calls a difference when the two 95% intervals do not overlap. When
``--extended`` holds a run of the gated variants past the main grid (``run_gate_results.py
--gated-only --strengths ...``), its new rows are added to the gated rows in two more views.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from lineas_tl.evaluate import format_frontier, frontier_summary, is_gated

HERE = Path(__file__).parent
BUDGETS = (0.05, 0.10, 0.25)
CONT_BUDGET = 0.10


def verdict(plain: pd.Series, gated: pd.Series) -> str:
    """``gated - plain`` and whether the intervals separate them (lower scores are better)."""
    d = gated["score"] - plain["score"]
    if gated["score_hi"] < plain["score_lo"]:
        word = "gate better"
    elif gated["score_lo"] > plain["score_hi"]:
        word = "gate worse"
    else:
        word = "overlap"
    return f"{d:+.3f} ({word})"


def gate_effect(summary: pd.DataFrame) -> pd.DataFrame:
    rows = {}
    for method in [m for m in summary["method"].unique() if not is_gated(m)]:
        for budget in BUDGETS:
            p = summary[(summary["method"] == method) & (summary["budget"] == budget)]
            g = summary[(summary["method"] == f"{method}+gate") & (summary["budget"] == budget)]
            if len(p) and len(g):
                rows.setdefault(method, {})[f"≤ +{100 * budget:g}% ppl"] = verdict(p.iloc[0], g.iloc[0])
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "method"
    return out.reset_index()


def with_extension(table: pd.DataFrame, extended: Path) -> pd.DataFrame | None:
    """``table`` plus the rows of ``extended``'s comparison.csv at (method, strength) pairs it lacks."""
    if not (extended / "comparison.csv").exists():
        return None
    more = pd.read_csv(extended / "comparison.csv")
    have = set(zip(table["method"], table["strength"]))
    new = more[[(m, s) not in have for m, s in zip(more["method"], more["strength"])]]
    return pd.concat([table, new], ignore_index=True).sort_values(["method", "strength"], kind="stable")


def concept_section(folder: Path, extended: Path | None = None) -> list[str]:
    table = pd.read_csv(folder / "comparison.csv")
    protocol = json.loads((folder / "protocol.json").read_text())
    lines = [f"## {folder.name}", "", f"Run: {protocol.get('seconds', '?')} s, seed {protocol.get('seed')}; "
             f"gate sites active per method: {protocol.get('gate_active_sites')}.", ""]  # fmt: skip
    both = f"both budgets: reference perplexity, and the continuations' perplexity within +{100 * CONT_BUDGET:g}%"
    views = [("Frontier (best held-out score within each budget)", table, {}),
             ("Calibrated view (the strongest strength before the first over each budget)", table, {"select": "calibrated"}),
             (f"Frontier within {both}", table, {"cont_budget": CONT_BUDGET})]  # fmt: skip
    wider = with_extension(table, extended / folder.name) if extended else None
    if wider is not None:
        views += [("Frontier, gated rows swept past the main grid", wider, {}),
                  (f"Frontier within {both}, gated rows swept past the main grid", wider, {"cont_budget": CONT_BUDGET})]  # fmt: skip
    for title, rows, kw in views:
        summary = frontier_summary(rows, BUDGETS, "score_out", **kw)
        lines += [f"### {title}", "", format_frontier(summary).to_markdown(index=False), "",
                  "Gated minus plain, at the same budget:", "", gate_effect(summary).to_markdown(index=False), ""]  # fmt: skip
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=HERE / "full")
    ap.add_argument("--extended", type=Path, default=HERE / "extended", help="gated rows past the main grid, if run")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    folders = sorted(p.parent for p in args.root.glob("*/comparison.csv"))
    lines = ["# The gate on SmolLM2: every method with and without it", "",
             f"`python results/gate/summarize.py --root {args.root}` from the runs of `run_gate_results.py`.", ""]  # fmt: skip
    for folder in folders:
        lines += concept_section(folder, args.extended)
    out = args.out or args.root / "RESULTS.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
