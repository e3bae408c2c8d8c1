"""The trade-off plot: concept score against perplexity, with error bars, the frontier and the ceiling."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lineas_tl.evaluate.frontier import CEILING, DEFAULT_BUDGETS, pareto_front, unsteered_perplexity

DEFAULT_CLIP = 0.5
"""Perplexity increase shown on the x axis (+50%); points beyond are counted, not drawn."""


def plot_tradeoff(
    table: Any,
    path: str | os.PathLike[str],
    title: str | None = None,
    *,
    budgets: Sequence[float] = DEFAULT_BUDGETS,
    clip: float | None = DEFAULT_CLIP,
) -> Path:
    """Plot concept score against perplexity, one colour per method, and save it as a PNG.

    One panel for each of the in-sample and out-of-sample scores the table has.
    Each point is one strength, with its 95% bootstrap interval as a vertical error bar (when the
    table has ``*_lo``/``*_hi`` columns) and its strength as a label (on the out-of-sample panel
    followed by ``c+x%``: the held-out continuations' perplexity under the unsteered model, relative
    to the unsteered model's own continuations, when the table has ``cont_ppl_increase``); the step line is the
    method's frontier (the best score reached so far as the perplexity budget grows, up to the
    method's last point on the axis). Dotted vertical lines mark the budgets, the black star the
    unsteered model, the dashed line and band the ceiling (the unsteered model on target prompts)
    when the table has one.

    The x axis stops at ``(1 + clip)`` times the unsteered perplexity, the range where a steered
    model is still usable: points beyond are not drawn and each panel says how many were left out
    (rows not scored because of their perplexity included). ``clip=None`` shows everything, on a
    log axis if it spans more than a factor of 20. Uses
    matplotlib's object API with the Agg canvas, so it never touches pyplot's global state.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [
        (column, label)
        for column, label in (
            ("score_in", "in sample (fit prompts)"),
            ("score_out", "out of sample (held-out prompts)"),
        )
        if column in table and table[column].notna().any()
    ]
    if not panels:
        raise ValueError("the table has no scores to plot (score_in and score_out are empty)")
    methods = table[table["method"] != CEILING]
    ceiling = table[table["method"] == CEILING]
    base = unsteered_perplexity(methods)
    limit = (1 + clip) * base if clip is not None else math.inf

    fig = Figure(figsize=(6.4 * len(panels), 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (column, label) in zip(axes, panels, strict=True):
        hidden = 0
        for name, group in methods.groupby("method", sort=False):
            hidden += int((group["strength"].ne(0) & group["perplexity"].gt(limit)).sum())
            group = group[group[column].notna()].sort_values("strength")
            shown = group[group["perplexity"] <= limit]
            if shown.empty:
                continue
            x, y = shown["perplexity"].to_numpy(), shown[column].to_numpy()
            yerr = None
            if f"{column}_lo" in shown and shown[f"{column}_lo"].notna().all():
                yerr = [y - shown[f"{column}_lo"].to_numpy(), shown[f"{column}_hi"].to_numpy() - y]
            bars = ax.errorbar(x, y, yerr=yerr, fmt="o", ms=3.5, elinewidth=0.7, capsize=2, alpha=0.6,
                               label=str(name))  # fmt: skip
            colour = bars.lines[0].get_color()
            front = pareto_front(list(zip(x.tolist(), y.tolist(), strict=True)))
            if front:
                fx, fy = [x[i] for i in front], [y[i] for i in front]
                ax.step([*fx, x.max()], [*fy, fy[-1]], where="post", color=colour, lw=2, alpha=0.85)
            cont = shown["cont_ppl_increase"] if "cont_ppl_increase" in shown and column.endswith("_out") else None
            for i, (xi, yi, s) in enumerate(zip(x, y, shown["strength"], strict=True)):
                if s != 0:  # the strength, and the continuations' perplexity change under the plain model
                    extra = f" c{100 * float(cont.iloc[i]):+.0f}%" if cont is not None and cont.iloc[i] == cont.iloc[i] else ""
                    ax.annotate(f"{s:g}{extra}", (xi, yi), textcoords="offset points", xytext=(3, 3), fontsize=6,
                                color=colour)  # fmt: skip
        ax.plot([base], methods.loc[methods["strength"] == 0, column].iloc[:1], "k*", ms=12, label="unsteered",
                zorder=5)  # fmt: skip
        if not ceiling.empty and ceiling[column].notna().all():
            c = ceiling.iloc[0]
            ax.axhline(c[column], color="k", ls="--", lw=1, label="ceiling (unsteered, target prompts)")
            if f"{column}_lo" in c and math.isfinite(c[f"{column}_lo"]):
                ax.axhspan(c[f"{column}_lo"], c[f"{column}_hi"], color="k", alpha=0.08)
        for b in budgets:
            if (1 + b) * base <= limit:
                ax.axvline((1 + b) * base, color="grey", ls=":", lw=0.8)
                ax.annotate(f"+{100 * b:g}%", ((1 + b) * base, 1), xycoords=("data", "axes fraction"),
                            xytext=(2, -10), textcoords="offset points", fontsize=7, color="grey")  # fmt: skip
        if math.isfinite(limit):
            ax.set_xlim(right=limit)
            if hidden:
                ax.set_title(f"{label}\n{hidden} point(s) beyond +{100 * clip:g}% perplexity not shown",
                             fontsize=9)  # fmt: skip
            else:
                ax.set_title(label, fontsize=9)
        else:
            ax.set_title(label, fontsize=9)
            ppl = methods["perplexity"][methods["perplexity"] > 0]
            if len(ppl) and ppl.max() / ppl.min() > 20:
                ax.set_xscale("log")
        ax.set_xlabel("perplexity on reference text (lower is better)")
        ax.set_ylabel("concept score, mean with 95% CI (lower is better)")
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


__all__ = ["DEFAULT_CLIP", "plot_tradeoff"]
