"""How many coordinates gated LinEAS keeps at each sparse-group-lasso strength ``gamma``.

The paper's sparsity claim (LinEAS keeps about 1% of the coordinates with the same mitigation and
better perplexity) is the one lever of LinEAS's own that the gate runs had not tried at a strength
that keeps anything: ``gamma=0.1`` under the default ``paper_short`` sets every map to the identity
(``README.md``, stop 30). This fits gated LinEAS (shared hard gate, control term, the default sites
and preset) on seed 0's paired draw of each concept at each ``gamma`` and appends one row per fit to
``sparsity/screen.jsonl``: the share of coordinates moved, the sites with any, the final loss.
Several processes with other ``--gammas`` can fill the file at once; ``--report`` writes
``sparsity/screen.md`` from every row.

    python results/gate/sparsity_screen.py --concepts sentiment --gammas 0.001 --threads 1
    python results/gate/sparsity_screen.py --report
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from run_gate_results import protocol, script_args

OUT = Path(__file__).parent / "sparsity"
ROWS = OUT / "screen.jsonl"


def layers(row: dict) -> str:
    """The active sites' block numbers, or "all" / "none"."""
    active = row.get("layers_active")
    if active is None or len(active) == row["sites"]:
        return "all" if row["sites_active"] == row["sites"] else "not recorded"
    return ", ".join(map(str, active)) or "none"


def report() -> None:
    rows = [json.loads(line) for line in ROWS.read_text().splitlines()]
    rows.sort(key=lambda r: (r["concept"], r["gamma"]))
    lines = ["# Gated LinEAS's support at each gamma", "",
             "`python results/gate/sparsity_screen.py`: seed 0's paired draw, shared hard gate, control term, "
             "the default sites (`blocks.N.ln2.hook_out`) and preset (`paper_short`).", "",
             "| concept | gamma | coordinates moved | sites with any (their blocks) | final loss | stop reason | seconds |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['concept']} | {r['gamma']:g} | {100 * r['support']:.2f}% | {r['sites_active']}/{r['sites']} ({layers(r)}) "
                     f"| {r['loss']:.4g} | {r['stop_reason']} | {r['seconds']} |")  # fmt: skip
    (OUT / "screen.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    def add_args(ap: argparse.ArgumentParser) -> None:
        ap.add_argument("--gammas", nargs="+", type=float, default=[])
        ap.add_argument("--report", action="store_true", help="only write screen.md from the rows")

    args = script_args(["sentiment", "toxicity"], add_args)
    if args.report:
        return report()
    import time

    import torch

    from lineas_tl import HookedSteerer, models

    model = models.load("smollm2-135m")
    OUT.mkdir(exist_ok=True)
    for name in args.concepts:
        _, src, tgt, control, _ = protocol(name, seed=0, paired=True)
        for gamma in args.gammas:
            started = time.perf_counter()
            st = HookedSteerer(model).fit(src, tgt, control=control, gate={"shared": True, "hard": True},
                                          gamma=gamma, progress=False, warn=False)  # fmt: skip
            masks = {site: m.support() for site, m in st.maps_.items()}
            active = [int(site.split(".")[1]) for site, mask in masks.items() if mask.any()]
            row = {"concept": name, "gamma": gamma, "support": float(torch.cat([m.flatten() for m in masks.values()]).float().mean()),
                   "sites": len(masks), "sites_active": len(active), "layers_active": active,
                   "loss": float(st.history_["loss"][-1]), "stop_reason": st.history_.get("stop_reason"),
                   "seconds": round(time.perf_counter() - started)}  # fmt: skip
            with ROWS.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(row, flush=True)


if __name__ == "__main__":
    main()
