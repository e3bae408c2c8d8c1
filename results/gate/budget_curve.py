"""Where gated LinEAS and gated ITI-c part: their difference at every continuations' budget.

`across_draws.py` reads each fit at four budgets. This reads the same paired draws at exactly
+5%, +10%, ..., +200% continuation perplexity under the unsteered model (`across_draws.read_at`:
the best row within the budget, or the score read linearly between two neighbouring strengths),
and at any budget, and gives per budget, over the draws:

- each method's mean score and the paired difference LinEAS minus ITI-c with its 95% Student-t
  interval and the number of draws at which LinEAS is lower;
- the number of paired draws a two-sided test at 5% would need to find a difference of the observed
  size with 80% power, if it is the true one (normal approximation, ``((1.96 + 0.84) sd / |mean|)^2``):
  how far more draws alone could move a level verdict;
- how finely each run measures the continuations' perplexity: its own 95% interval over the 96
  continuations, as a share of the unsteered row's (:func:`resolution`), to set beside a +10% budget.

LinEAS is the shift-only map at its own heads with every strength run (toxicity: 0.5-6, 1.25, 1.75,
8 and 12; sentiment: 0.5-6, 1.25 and 1.75); ITI-c is swept at 0.1-3 with 0.3 and 0.4, at its own
heads and, as a control, at LinEAS's. Writes `paired/BUDGET_CURVE.md` and `paired/budget_curve.png`.

    python results/gate/budget_curve.py
"""

from __future__ import annotations

import math

import pandas as pd
from across_draws import ITI_OWN, ITI_OWN_MID, MID, SHIFT_ALL, SHIFT_FINE, VIEWS, mean_ci, read_at, t_interval, tables
from scipy.stats import norm
from standings import HERE

from lineas_tl.evaluate import frontier_summary

BUDGETS = (0.05, 0.10, 0.15, 0.20, 0.25, 0.35, 0.50, 0.75, 1.00, 2.00, None)
"""continuations' budgets read (relative increase; ``None``: any)."""
PAIRS = {"toxicity": (SHIFT_ALL, MID, ITI_OWN), "sentiment": (SHIFT_FINE, MID, ITI_OWN_MID)}
"""concept -> (LinEAS, ITI-c as published, ITI-c at LinEAS's heads)"""


def _label(budget: float | None) -> str:
    return "any" if budget is None else f"+{100 * budget:g}%"


def curve(concept: str) -> pd.DataFrame:
    """One row per (fit, seed, budget) of the fits in :data:`PAIRS`: the score read there."""
    out = []
    for label, seed, t in tables(concept):
        if label not in PAIRS[concept]:
            continue
        for b in BUDGETS:
            score = frontier_summary(t, [VIEWS[0][0]], "score_out").iloc[0]["score"] if b is None else read_at(t, b)
            out.append(dict(fit=label, seed=seed, budget=_label(b), score=score))
    return pd.DataFrame(out)


def resolution(concept: str) -> tuple[float, float]:
    """The continuations' perplexity's own 95% interval (over the 96 continuations), as a half-width
    relative to the unsteered row's perplexity: its median over the unsteered rows and over every
    row within +50%, of the fits in :data:`PAIRS`."""
    unsteered, within = [], []
    for label, _, t in tables(concept):
        if label in PAIRS[concept]:
            rel = (t["cont_ppl_hi"] - t["cont_ppl_lo"]) / 2 / t.loc[t["strength"] == 0, "cont_ppl"].iloc[0]
            unsteered += list(rel[t["strength"] == 0])
            within += list(rel[t["cont_ppl_increase"] <= 0.5])
    return float(pd.Series(unsteered).median()), float(pd.Series(within).median())


def draws_for_power(d: pd.Series, power: float = 0.8) -> str:
    """Paired draws a two-sided 5% test needs to find ``d``'s mean with ``power`` if it is the truth."""
    m, sd = abs(float(d.mean())), float(d.std(ddof=1))
    if m == 0 or len(d) < 2:
        return "-"
    n = math.ceil(((norm.ppf(0.975) + norm.ppf(power)) * sd / m) ** 2)
    return "> 1000" if n > 1000 else str(n)


def report(concept: str, scores: pd.DataFrame) -> list[str]:
    """The per-budget means and differences of :func:`curve`'s scores, as markdown lines."""
    lineas, iti, iti_there = PAIRS[concept]
    wide = scores.pivot_table(index=["fit", "seed"], columns="budget", values="score")
    budgets = list(dict.fromkeys(scores["budget"]))
    plain, within = resolution(concept)
    lines = [f"## {concept}", "", f"LinEAS: {lineas}. ITI-c: {iti} (its own heads); {iti_there} (the control). "
             f"The continuations' perplexity is itself measured to ±{100 * plain:.1f}% (95% half-width, median over the "
             f"unsteered rows; ±{100 * within:.1f}% over every row within +50%).", "",
             "| continuations' budget | LinEAS | ITI-c | LinEAS minus ITI-c | draws for 80% power | ITI-c at LinEAS's heads | LinEAS minus it | draws for 80% power |",
             "|---" * 8 + "|"]  # fmt: skip
    for b in budgets:
        cells = [mean_ci(wide.loc[lineas][b])]
        for base in (iti, iti_there):
            d = (wide.loc[lineas][b] - wide.loc[base][b]).dropna()
            cells += [mean_ci(wide.loc[base][b]), f"{mean_ci(d, '+')}; lower at {int((d < 0).sum())} of {len(d)}", draws_for_power(d)]
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    return lines + [""]


def plot(curves: dict[str, pd.DataFrame]) -> None:
    """The difference LinEAS minus each ITI-c against the budget, with 95% intervals over draws."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 4), squeeze=False)
    for ax, (concept, scores) in zip(axes[0], curves.items()):
        lineas, *bases = PAIRS[concept]
        wide = scores[scores["budget"] != "any"].pivot_table(index=["fit", "seed"], columns="budget", values="score")
        xs = [b for b in BUDGETS if b is not None]
        for base, style in zip(bases, ("-", "--")):
            d = (wide.loc[lineas] - wide.loc[base]).dropna()[[_label(b) for b in xs]]
            m, half = (pd.Series(v) for v in zip(*(t_interval(d[c])[:2] for c in d)))
            x = [100 * b for b in xs]
            ax.plot(x, m, style, marker="o", label=f"minus {base} ({len(d)} draws)")
            ax.fill_between(x, m - half, m + half, alpha=0.2)
        ax.axhline(0, color="k", lw=0.8)
        ax.set(xscale="log", xlabel="continuations' perplexity budget (%)", ylabel="LinEAS minus ITI-c (lower: LinEAS better)", title=concept)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(HERE / "paired" / "budget_curve.png", dpi=120)


def main() -> None:
    curves = {c: curve(c) for c in PAIRS}
    lines = ["# Gated LinEAS against gated ITI-c at every continuations' budget", "",
             "`python results/gate/budget_curve.py` (its docstring says what it reads and how). Score read at exactly each "
             "budget on the continuations' perplexity under the unsteered model (48 held-out prompts x 2 samples; lower is "
             "better), mean over the paired draws [95% t-interval over draws] (sd).", ""]  # fmt: skip
    for concept, scores in curves.items():
        lines += report(concept, scores)
    (HERE / "paired" / "BUDGET_CURVE.md").write_text("\n".join(lines))
    plot(curves)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
