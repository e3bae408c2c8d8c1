"""The tables, plots and report of a ``run.py`` run, from its rows (see ``run.py``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np


def summarise(rows: list[dict[str, Any]]) -> Any:
    """Per (method, N): mean over seeds of the score, perplexity and W2 ratios, with a 95% interval
    over seeds (``*_lo``/``*_hi``) and, for the score, the per-fit interval over prompts averaged
    over seeds (``score_prompts_lo``/``score_prompts_hi``)."""
    import pandas as pd

    from lineas_tl.evaluate.bootstrap import bootstrap_ci

    out = []
    for (method, n), g in pd.DataFrame(rows).groupby(["method", "n"], sort=False):
        entry: dict[str, Any] = {"method": method, "n": n, "seeds": len(g)}
        for col in ("score", "ppl_ratio", "w2_ratio", "strength"):
            lo, hi = bootstrap_ci(g[col].to_numpy()) if len(g) > 1 else (math.nan, math.nan)
            entry.update({col: g[col].mean(), f"{col}_lo": lo, f"{col}_hi": hi})
        # the interval over prompts of each fit, averaged over seeds (the only one with a single seed)
        entry.update(score_prompts_lo=g["score_lo"].mean(), score_prompts_hi=g["score_hi"].mean())
        out.append(entry)
    return pd.DataFrame(out)


def plots(out: Path, summary: Any, sparse: list[dict[str, Any]], table: list[dict[str, Any]], base: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for method, g in summary.groupby("method", sort=False):
        for ax, col in zip(axes, ("score", "ppl_ratio", "w2_ratio")):
            err = np.nan_to_num(np.abs(np.stack([g[col] - g[f"{col}_lo"], g[f"{col}_hi"] - g[col]])))
            ax.errorbar(g["n"], g[col], yerr=err, marker="o", capsize=3, label=method)
    axes[0].axhline(base, color="grey", ls=":", label="unsteered")
    ns = sorted(summary["n"].unique())
    for ax, title in zip(axes, ("score at the calibrated strength", "perplexity / unsteered", "held-out W2 steered / unsteered")):
        ax.set_xscale("log", base=2)
        ax.set(xticks=ns, xticklabels=[str(n) for n in ns], xlabel="N prompts per set", title=title)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out / "data_efficiency.png", dpi=120)
    if sparse:
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
        g = [max(r["gamma"], 1e-5) for r in sparse]
        a.plot(g, [100 * r["coords_kept"] for r in sparse], "o-", label="% coordinates")
        a.plot(g, [100 * r["sites_kept"] for r in sparse], "s-", label="% sites")
        b.plot(g, [r["score"] for r in sparse], "o-", label="score, calibrated")
        b.plot(g, [r["score_at_1"] for r in sparse], "s-", label="score, strength 1")
        for ax, title in ((a, "support"), (b, "concept score")):
            ax.set(xscale="log", xlabel="gamma (0 drawn at 1e-5)", title=title)
            ax.legend()
        fig.tight_layout()
        fig.savefig(out / "sparsity.png", dpi=120)
    fig, ax = plt.subplots(figsize=(6, 4))
    for view, marker in (("paper", "o"), ("calibrated", "^")):
        pts = [r for r in table if r["view"] == view]
        ax.scatter([r["ppl_ratio"] for r in pts], [r["score"] for r in pts], marker=marker, label=view)
        for r in pts:
            ax.annotate(r["method"], (r["ppl_ratio"], r["score"]), fontsize=8)
    ax.set(xlabel="perplexity / unsteered", ylabel="score (lower: less of the concept)", title="operating points")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "operating_points.png", dpi=120)


def report(out: Path, cfg: Any, bench: Any, summary: Any, sparse: list[dict[str, Any]], table: list[dict[str, Any]],
           commands: list[str]) -> None:  # fmt: skip
    import pandas as pd

    def frame(rows: list[dict[str, Any]]) -> str:
        return pd.DataFrame(rows).drop(columns=["id", "part", "seconds"], errors="ignore").round(4).to_markdown(index=False)

    lines = [
        f"# Paper claims on {cfg.model}, concept {cfg.concept}", "",
        "Commands (each appends its rows to `rows.jsonl`; the last one writes this report):", "",
        *[f"    {c}" for c in commands], "",
        f"Unsteered: score {bench.base_score['score']:.3f} [{bench.base_score['score_lo']:.3f}, "
        f"{bench.base_score['score_hi']:.3f}], perplexity {bench.base_ppl:.2f}. Budget +{100 * cfg.budget:.0f}%; "
        f"{len(bench.eval_prompts)} held-out prompts, generation: {bench.gen.describe()}; LinEAS: "
        f"{cfg.lineas or 'the default fit'}, sites {cfg.sites or 'default'}.", "",
        "## Data efficiency (calibrated strength; 95% intervals over seeds, and over prompts)", "",
        summary.round(4).to_markdown(index=False), "",
        "## Sparsity (N = %d, seed 0)" % cfg.sparsity_n, "", frame(sparse), "",
        "## Operating points: the paper's strengths next to the calibrated ones (N = %d, seed 0)" % cfg.table_n, "",
        frame(table), "",
    ]  # fmt: skip
    (out / "report.md").write_text("\n".join(lines))
