"""The shared hard gate against the per-site gate and no gate: `results/gate/shared_hard/RESULTS.md`.

`run_gate_results.py --gate '{"shared": true, "hard": true}' --gated-only` runs the gated methods
with one 0/1 gate per prompt for every site, on the same fit prompts, held-out prompts, reference
text and sampling seeds as the full run (`results/gate/full/`, seed 0). This adds those rows to the
full run's plain and per-site gated rows, as ``<method>+gate (shared, hard)``, and writes, per
concept, the frontier within the reference-perplexity budgets and within both budgets (the
continuations' perplexity within +10% too), and the shared gate minus each of the other two for
every method, with a verdict only where the 95% intervals do not overlap.

    python results/gate/shared_summary.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
from summarize import BUDGETS, CONT_BUDGET, HERE, verdict

from lineas_tl.evaluate import GATE_SUFFIX, format_frontier, frontier_summary

SHARED = f"{GATE_SUFFIX} (shared, hard)"


def differences(summary: pd.DataFrame, methods: list[str]) -> pd.DataFrame:
    """Per method and budget: shared minus plain, and shared minus the per-site gate."""
    rows = []
    for method in methods:
        row = {"method": method}
        for other, label in ((method, "plain"), (f"{method}{GATE_SUFFIX}", "per-site gate")):
            for budget in BUDGETS:
                o = summary[(summary["method"] == other) & (summary["budget"] == budget)]
                s = summary[(summary["method"] == f"{method}{SHARED}") & (summary["budget"] == budget)]
                if len(o) and len(s):
                    row[f"vs {label}, ≤ +{100 * budget:g}%"] = verdict(o.iloc[0], s.iloc[0])
        rows.append(row)
    return pd.DataFrame(rows)


def concept_section(shared_dir: Path, full_dir: Path) -> list[str]:
    shared = pd.read_csv(shared_dir / "comparison.csv")
    protocol = json.loads((shared_dir / "protocol.json").read_text())
    gated = [m for m in shared["method"].unique() if m.endswith(GATE_SUFFIX)]
    methods = [m[: -len(GATE_SUFFIX)] for m in gated]
    shared["method"] = shared["method"].map(lambda m: m + SHARED[len(GATE_SUFFIX) :] if m in gated else m)
    full = pd.read_csv(full_dir / "comparison.csv")
    keep = set(methods) | {f"{m}{GATE_SUFFIX}" for m in methods}
    table = pd.concat([full[full["method"].isin(keep)], shared[shared["method"] != "unsteered"]], ignore_index=True)
    lines = [f"## {shared_dir.name}", "",
             f"Shared-gate run: {protocol.get('seconds', '?')} s, seed {protocol.get('seed')}, gate options "
             f"{protocol.get('gate_options')}; active probes per method: {protocol.get('gate_active_sites')}. "
             f"Plain and per-site gated rows: `{full_dir.relative_to(HERE.parent.parent)}` (same prompts and seeds).", ""]  # fmt: skip
    both = f"both budgets (reference perplexity, and the continuations' within +{100 * CONT_BUDGET:g}%)"
    for title, kw in (("Frontier (best held-out score within each reference-perplexity budget)", {}),
                      (f"Frontier within {both}", {"cont_budget": CONT_BUDGET})):  # fmt: skip
        summary = frontier_summary(table, BUDGETS, "score_out", **kw)
        lines += [f"### {title}", "", format_frontier(summary).to_markdown(index=False), "",
                  "The shared hard gate minus plain and minus the per-site gate, at the same budget:", "",
                  differences(summary, methods).to_markdown(index=False), ""]  # fmt: skip
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=HERE / "shared_hard")
    ap.add_argument("--full", default=str(HERE / "full" / "{concept}"),
                    help="the folder of each concept's plain (and per-site gated) rows; {concept} is replaced")
    args = ap.parse_args()
    flags = [f"--{k} {v}" for k, v in (("root", args.root), ("full", args.full)) if v != ap.get_default(k)]
    command = " ".join(["python results/gate/shared_summary.py", *flags])
    lines = ["# One 0/1 gate per prompt for every site, against the per-site gate and no gate", "",
             f"`{command}` from the runs of `run_gate_results.py`.", ""]  # fmt: skip
    for folder in sorted(p.parent for p in args.root.glob("*/comparison.csv")):
        lines += concept_section(folder, Path(args.full.format(concept=folder.name)).resolve())
    (args.root / "RESULTS.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
