"""Every method, gated or not, at each site set measured, ranked: `results/gate/STANDINGS.md`.

The runs below share the main job's protocol, prompts and sampling seeds (seed 0), so their rows
compare directly. Each method is read at every site set it was run at, labelled:

- ``results/<concept>/``: the main job at the default sites (``ln2.hook_out``; LinEAS's
  ``paper_short``), plain;
- ``results/gate/full/<concept>/``: attention and MLP outputs (LinEAS ``fast``), plain and with the
  per-site gate, and ``results/gate/extended/<concept>/``: the gated baselines swept to strength 4;
- ``results/gate/shared_hard/<concept>/`` (``results/gate/style/style/`` for style): attention and
  MLP outputs, plain (style) and the shared hard gate;
- ``results/gate/shared_hard_default/<concept>/``: LinEAS at the default sites, the shared hard gate,
  and ``results/gate/shared_hard_default_extended/<concept>/``: the same swept to strengths 3 and 4;
- ``results/at_outputs/<concept>/``: the main job at the attention and MLP outputs, plain, for the
  methods and strengths the runs above lack (a (method, strength) row comes from the first run
  listed that has it).

ITI-c and ActAdd choose their own sites, so their rows are the same in every run (checked: the
main job's ITI-c rows equal ``full/``'s). Per concept, one row per method and site set: its best
held-out score within each reference-perplexity budget, and within both budgets (the
continuations' perplexity under the unsteered model within +10% too), with whether its 95%
interval lies apart from the column's best.

    python results/gate/standings.py

``--prompts 48`` ranks the runs on 48 held-out prompts instead (``RUNS_48``: LinEAS and ITI-c,
plain and with the shared hard gate, at the default sites; CAA, Mean-AcT and Linear-AcT, plain and
with the per-site gate, at the outputs; ActAdd, plain and with the per-site gate, at its own layer;
toxicity and sentiment) and writes ``STANDINGS_48.md``, whose last three views hold the reference
text within +10% and the continuations within +10%, +25% and +50%: a gated row costs the reference
text nothing, so what it pays shows in its continuations.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from summarize import BUDGETS, CONT_BUDGET, HERE

from lineas_tl.evaluate import base_method, frontier_summary, is_gated

ROOT = HERE.parent
SEEDS = range(15)
"""The paired draws' seeds the cross-draw scripts look for; a seed not run is skipped."""
RUNS = (  # (folder template, site label, label of the gated rows)
    ("{root}/{concept}", "ln2", None),
    ("{root}/gate/full/{concept}", "outputs", "per-site gate"),
    ("{root}/gate/extended/{concept}", "outputs", "per-site gate"),
    ("{root}/gate/shared_hard/{concept}", "outputs", "shared hard gate"),
    ("{root}/gate/style/{concept}", "outputs", "shared hard gate"),
    ("{root}/gate/shared_hard_default/{concept}", "ln2", "shared hard gate"),
    ("{root}/gate/shared_hard_default_extended/{concept}", "ln2", "shared hard gate"),
    ("{root}/at_outputs/{concept}", "outputs", None),
)
SKIP = {("ln2", "iti"), ("ln2", "actadd")}  # the same fits as at the outputs: listed once
RUNS_48 = (
    ("{root}/gate/shared_hard_default_48/{concept}", "ln2", "shared hard gate"),
    ("{root}/gate/plain_default_48/{concept}", "ln2", None),
    ("{root}/gate/per_site_outputs_48/{concept}", "outputs", "per-site gate"),
    ("{root}/gate/actadd_48/{concept}", "outputs", "per-site gate"),
)


def rows(concept: str, runs: tuple[tuple[str, str, str | None], ...] = RUNS, skip: set[tuple[str, str]] = SKIP) -> pd.DataFrame:
    """Every run's rows for ``concept``, methods renamed ``method [sites, gate]``."""
    tables = []
    for template, sites, gate in runs:
        path = Path(template.format(root=ROOT, concept=concept)) / "comparison.csv"
        if not path.exists():
            continue
        t = pd.read_csv(path)
        t = t[~t["method"].isin(["unsteered", "ceiling"])]
        base, gated = t["method"].map(base_method), t["method"].map(is_gated)
        keep = [(sites, b) not in skip for b in base]
        t, base, gated = t[keep], base[keep], gated[keep]
        site = base.map(lambda b: "heads" if b == "iti" else "one layer" if b == "actadd" else sites)
        t = t.assign(method=base + " [" + site + gated.map(lambda g: f", {gate}" if g else "") + "]")
        tables.append(t)
    return pd.concat(tables, ignore_index=True).drop_duplicates(["method", "strength"])


def cell(r: pd.Series, best: pd.Series) -> str:
    text = f"{r['score']:.3f} [{r['score_lo']:.3f}, {r['score_hi']:.3f}] @ {r['strength']:g}"
    if r["method"] == best["method"]:
        return f"**{text}**"
    return text + (" †" if r["score_lo"] > best["score_hi"] else "")


def standings(table: pd.DataFrame, views: list[tuple[float, float | None]] | None = None) -> list[str]:
    """One row per method, one column per view (reference budget, continuations' budget or None),
    sorted by the first column."""
    views = views or [(b, None) for b in BUDGETS] + [(b, CONT_BUDGET) for b in BUDGETS]
    columns: dict[str, dict[str, str]] = {}
    order: list[str] = []
    for budget, cont in views:
        s = frontier_summary(table, [budget], "score_out", cont_budget=cont).set_index("method", drop=False)
        best = s.loc[s["score"].idxmin()]
        name = f"≤ +{100 * budget:g}%" + ("" if cont is None else f", cont. ≤ +{100 * cont:g}%")
        columns[name] = {m: cell(r, best) for m, r in s.iterrows()}
        order = order or list(s["score"].sort_values().index)
    lines = ["| method [sites, gate] | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {m} | " + " | ".join(c[m] for c in columns.values()) + " |" for m in order]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, choices=(12, 48), default=12)
    n = ap.parse_args().prompts
    runs, skip, concepts = (RUNS, SKIP, ("toxicity", "sentiment", "style")) if n == 12 else (RUNS_48, set(), ("toxicity", "sentiment"))
    views = None if n == 12 else [(b, None) for b in BUDGETS] + [(0.10, c) for c in (0.10, 0.25, 0.50)]
    last = ("within it and with the continuations' perplexity under the unsteered model within +10% too" if n == 12 else
            "within +10% reference perplexity and with the continuations' perplexity under the unsteered model within +10%, +25% and +50%")
    lines = ["# Standings: every method, gated or not, at every site set run" + ("" if n == 12 else f", on {n} held-out prompts"), "",
             f"`python results/gate/standings.py{'' if n == 12 else f' --prompts {n}'}` (its docstring lists the runs it reads). Seed 0; {n} held-out prompts "
             "x 2 samples; lower is better" + (" (style: 1 - P(Shakespeare))" if n == 12 else "") + ". Each cell: the best held-out score [95% interval over prompts] @ strength "
             f"within the reference-perplexity budget, and in the last three columns {last}. Bold: the lowest in the column; "
             "†: the interval lies wholly above the bold one's.", ""]  # fmt: skip
    for concept in concepts:
        lines += [f"## {concept}", "", *standings(rows(concept, runs, skip), views), ""]
    (HERE / ("STANDINGS.md" if n == 12 else f"STANDINGS_{n}.md")).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
