"""Pool the preset screen over seeds: each candidate's best held-out score within each budget.

Reads the ``comparison.csv`` that `screen.py` (and, for the old default at seed 0, the main job)
wrote for every seed, recomputes each seed's frontier, and writes ``SEEDS.md``:

- per seed, the best score within each reference-perplexity budget with its 95% interval over
  prompts;
- per candidate, the mean over seeds with two intervals: over prompts (the seeds' bootstrap
  intervals combined as independent normal errors) and over seeds (Student t on the seeds' spread);
- per budget, the paired difference of two candidates seed by seed (same fit prompts, same
  held-out prompts), with the same two intervals.

    python results/preset_screen/seeds.py

The candidate ``default`` is the library's default before stop 28 (2026-12-05): ``preset="fast"`` at
every block's attention and MLP outputs. Its seed 0 is the main job's run of that time, kept in
``results/at_outputs/<concept>/`` since the main job (``results/<concept>/``) was rerun at the new
default (the paper's sites, ``paper_short``).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from scipy import stats

from lineas_tl.evaluate.frontier import frontier_summary

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent
BUDGETS = (0.05, 0.10, 0.25)
# folders of screen.py runs; the first is the library's default before stop 28 (fast at the outputs)
CANDIDATES = ("default", "paper_at_ln2", "paper300_at_ln2")


def runs(candidate: str, concept: str) -> dict[int, Path]:
    """``{seed: comparison.csv}`` for one candidate and concept, the seeds found on disk (seed 0 of
    the first two candidates on toxicity and sentiment lives where it was first written; the old
    default's, the main job's run before stop 28, where it was moved)."""
    seed0 = {
        ("default", "toxicity"): RESULTS / "at_outputs" / "toxicity",
        ("default", "sentiment"): RESULTS / "at_outputs" / "sentiment",
        ("paper_at_ln2", "toxicity"): HERE / "paper_at_ln2",
        ("paper_at_ln2", "sentiment"): HERE / "paper_at_ln2_sentiment",
    }.get((candidate, concept))
    found = {0: seed0 / "comparison.csv"} if seed0 else {}
    for path in sorted((HERE / candidate).glob(f"{concept}-seed*/comparison.csv")):
        found[int(path.parent.name.rsplit("seed", 1)[1])] = path
    return {s: p for s, p in found.items() if p.exists()}


def seed_frontier(path: Path) -> pd.DataFrame:
    """One seed's best LinEAS score within each budget, with its prompt interval and unsteered score."""
    table = pd.read_csv(path)
    table = table[table["method"] == "lineas"].reset_index(drop=True)
    summary = frontier_summary(table, budgets=BUDGETS)
    summary["unsteered"] = float(table.loc[table["strength"] == 0, "score_out"].iloc[0])
    return summary.set_index("budget")


def half_width(f: pd.DataFrame, budget: float) -> float:
    """Half the 95% interval over prompts of one seed's cell."""
    return (f.loc[budget, "score_hi"] - f.loc[budget, "score_lo"]) / 2


def pooled(values: list[float], halves: list[float]) -> dict[str, float]:
    """Mean over seeds; its interval over prompts (the seeds' half-widths combined as independent
    normal errors) and over seeds (Student t on the seeds' spread, from two seeds on)."""
    k = len(values)
    mean = sum(values) / k
    over_prompts = math.sqrt(sum(h**2 for h in halves)) / k
    out = {"mean": mean, "prompts_lo": mean - over_prompts, "prompts_hi": mean + over_prompts}
    if k > 1:
        half = stats.t.ppf(0.975, k - 1) * float(pd.Series(values).std(ddof=1)) / math.sqrt(k)
        out.update(seeds_lo=mean - half, seeds_hi=mean + half)
    return out


def _fmt(p: dict[str, float]) -> str:
    seeds = f"; seeds [{p['seeds_lo']:.3f}, {p['seeds_hi']:.3f}]" if "seeds_lo" in p else ""
    return f"{p['mean']:.3f} (prompts [{p['prompts_lo']:.3f}, {p['prompts_hi']:.3f}]{seeds})"


def report(concept: str, candidates: tuple[str, ...] = CANDIDATES) -> list[str]:
    """The markdown section of one concept: every candidate with a run on disk, each paired with the first."""
    fronts = {c: {s: seed_frontier(p) for s, p in runs(c, concept).items()} for c in candidates}
    fronts = {c: by_seed for c, by_seed in fronts.items() if by_seed}
    lines = [f"## {concept}", "", "Per seed (best score within the budget [95% over prompts] @ strength; unsteered):", "",
             "| candidate | seed | unsteered | " + " | ".join(f"≤ +{b:.0%}" for b in BUDGETS) + " |",
             "|---|---|---|" + "---|" * len(BUDGETS)]
    for c, by_seed in fronts.items():
        for s, f in sorted(by_seed.items()):
            cells = [f"{f.loc[b, 'score']:.3f} [{f.loc[b, 'score_lo']:.3f}, {f.loc[b, 'score_hi']:.3f}] @ {f.loc[b, 'strength']:g}"
                     if pd.notna(f.loc[b, "score"]) else "–" for b in BUDGETS]
            lines.append(f"| {c} | {s} | {f['unsteered'].iloc[0]:.3f} | " + " | ".join(cells) + " |")
    lines += ["", "Mean over seeds (95% intervals over prompts; over seeds, Student t):", "",
              "| candidate | seeds | " + " | ".join(f"≤ +{b:.0%}" for b in BUDGETS) + " |", "|---|---|" + "---|" * len(BUDGETS)]
    for c, by_seed in fronts.items():
        cells = [_fmt(pooled([f.loc[b, "score"] for f in by_seed.values()], [half_width(f, b) for f in by_seed.values()]))
                 for b in BUDGETS]
        lines.append(f"| {c} | {', '.join(map(str, sorted(by_seed)))} | " + " | ".join(cells) + " |")
    a = candidates[0]
    others = [c for c in fronts if c != a] if a in fronts else []
    for b_, shared in ((c, sorted(set(fronts[a]) & set(fronts[c]))) for c in others):
        if not shared:
            continue
        cells = []
        for b in BUDGETS:
            diffs = [fronts[a][s].loc[b, "score"] - fronts[b_][s].loc[b, "score"] for s in shared]
            halves = [math.hypot(half_width(fronts[a][s], b), half_width(fronts[b_][s], b)) for s in shared]
            cells.append(_fmt(pooled(diffs, halves)))
        lines += ["", f"Paired difference {a} − {b_} on seeds {', '.join(map(str, shared))} (negative: {a} lower):", "",
                  "| " + " | ".join(f"≤ +{b:.0%}" for b in BUDGETS) + " |", "|" + "---|" * len(BUDGETS),
                  "| " + " | ".join(cells) + " |"]
    return lines + [""]


def main() -> None:
    lines = ["# The preset screen pooled over seeds", "", "Command: `python results/preset_screen/seeds.py`.", ""]
    for concept in ("toxicity", "sentiment", "style"):
        lines += report(concept)
    (HERE / "SEEDS.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
