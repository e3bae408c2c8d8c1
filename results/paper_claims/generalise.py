"""What makes LinEAS generalise? In-sample and held-out pooled W2, per fitting choice.

The paper's first claim is that end-to-end maps hold up out of sample. `run.py` measures the
held-out W2 ratio across N; this script varies one fitting choice at a time at N = 32 (seed 0, the
same fit and held-out prompts as `run.py`) and reports, for each variant:

- **in-sample**: the fit's source prompts steered at strength 1 against its target prompts, pooled
  W2² at every site divided by the same unsteered, averaged over the sites;
- **held-out**: the same on the 16 + 16 prompts held out of every fit;
- **gap**: held-out / in-sample (1 = generalises fully; higher = the fit matched its own prompts
  better than new ones);
- the fit's steps, final loss, whether it converged, and seconds.

Variants, at the library's default sites (``--sites`` for others): the library's default fit;
early stopping (50 and 100 steps); sparsity (gamma 0.3 and 0.5, see `README.md`); the control term
(`control=` 32 neutral prompts, no gate); the paper's recipe at `ln2.hook_out` (`--paper`: 1000 SGD
steps, slow on a CPU). The W2 ratios are normalised per site, so variants at other sites compare on
the same scale.

`toxicity/generalise/` was made before stop 28 (2026-12-05), when the default sites were every
block's attention and MLP outputs (60) and the default fit the fast preset (300-step cap):
`--sites outputs` reproduces it. The defaults are now `blocks.N.ln2.hook_out` and `paper_short`.

    python results/paper_claims/generalise.py --threads 1 --sites outputs   # about an hour on one CPU thread
    python results/paper_claims/generalise.py --threads 1 --paper     # and the paper's recipe
    python results/paper_claims/generalise.py --quick                 # plumbing: 8 prompts, 5 steps
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from run import draw, fit_and_heldout, w2_ratios, w2_reference

HERE = Path(__file__).parent
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "steps=50": {"steps": 50},
    "steps=100": {"steps": 100},
    "gamma=0.3": {"gamma": 0.3},
    "gamma=0.5": {"gamma": 0.5},
    "control term": {"control": True},
}
PAPER = {"paper recipe at ln2": {"preset": "paper", "sites": "paper"}}


def w2_ratio(model: Any, steerer: Any, source: list[str], target: list[str]) -> float:
    """Pooled W2² of ``source`` steered at 1 against ``target``, over unsteered, averaged over sites."""
    sites = list(steerer.maps_)
    target_acts, base = w2_reference(model, sites, source, target)
    ratios = w2_ratios(model, steerer, sites, source, target_acts, base)
    return sum(ratios.values()) / len(sites)


def main() -> None:
    import torch

    from lineas_tl import HookedSteerer, models
    from lineas_tl.concepts import get_concept

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concept", default="toxicity")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--paper", action="store_true", help="also the paper's recipe at ln2.hook_out (1000 SGD steps)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--sites", default=None, help="site preset of every variant but --paper's, e.g. 'outputs' "
                    "(default: the library's)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = models.load("smollm2-135m")
    concept = get_concept(args.concept)
    n, n_heldout = (8, 8) if args.quick else (32, 16)
    fit_pool, heldout = fit_and_heldout(concept, n_heldout)
    src, tgt = draw(fit_pool, n, seed=0)
    control = concept.control_prompts(n, seed=0)
    out = args.out or HERE / args.concept / ("generalise-quick" if args.quick else "generalise")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, spec in (VARIANTS | (PAPER if args.paper else {})).items():
        spec = dict(spec)
        sites = spec.pop("sites", args.sites)
        kw: dict[str, Any] = {"control": control} if spec.pop("control", False) else {}
        if args.quick:
            spec["steps"] = min(spec.get("steps", 5), 5)
        started = time.perf_counter()
        steerer = HookedSteerer(model, sites=sites).fit(src, tgt, progress=False, warn=False, seed=0, **spec, **kw)
        seconds = time.perf_counter() - started
        loss = steerer.history_.get("loss") or [float("nan")]
        row = {"variant": name, "in_sample": w2_ratio(model, steerer, src, tgt),
               "held_out": w2_ratio(model, steerer, *heldout), "steps": len(loss), "final_loss": float(loss[-1]),
               "converged": steerer.history_.get("converged"), "sites": len(steerer.maps_), "fit_seconds": round(seconds)}  # fmt: skip
        row["gap"] = row["held_out"] / row["in_sample"]
        rows.append(row)
        print(json.dumps(row), flush=True)
        (out / "rows.json").write_text(json.dumps(rows, indent=1))
    command = "python results/paper_claims/generalise.py --threads " + str(args.threads) + (" --paper" if args.paper else "") + (" --quick" if args.quick else "")
    command += f" --sites {args.sites}" if args.sites else ""
    lines = [f"# What makes LinEAS generalise: {args.concept}, N = {n}, seed 0", "", f"Command: `{command}`", "",
             "| variant | in-sample W2 ratio | held-out W2 ratio | gap (held-out / in-sample) | steps | final loss | converged | sites | fit s |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['variant']} | {r['in_sample']:.3f} | {r['held_out']:.3f} | {r['gap']:.2f} | {r['steps']} "
                     f"| {r['final_loss']:.3g} | {r['converged']} | {r['sites']} | {r['fit_seconds']} |")  # fmt: skip
    (out / "GENERALISE.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
