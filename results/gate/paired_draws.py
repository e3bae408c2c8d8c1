"""How much of a fit draw's source-to-target mean difference is the draw itself? Paired against
independent draws of the fit prompts (``Concept.split(..., paired=...)``).

A concept whose pools pair prompt by prompt (the same sentence frame and subject slot, only the
concept's words differ) can be drawn two ways: 32 source and 32 target prompts independently (the
default), or 32 matched pairs (``paired=True``). The unsteered model's mean-pooled activations at
every default site (``blocks.N.ln2.hook_out``) give each draw's mean difference, target minus
source; the difference over the full 64 + 64 pools (every pair) is the reference a draw estimates.

    python results/gate/paired_draws.py --threads 1        # paired/nuisance.md, about a minute

The runs on paired draws are in this folder's README, "Paired fit draws".
"""

from __future__ import annotations

from pathlib import Path

import torch
from run_gate_results import script_setup

OUT = Path(__file__).parent / "paired" / "nuisance.md"
SEEDS = (0, 1, 2, 3)


def table(concept_name: str, model: object, n_fit: int = 32) -> list[str]:
    """One markdown row per draw kind: mean difference against the full pools' and across seeds."""
    from lineas_tl import collect_activations
    from lineas_tl.concepts import get_concept
    from lineas_tl.sites import resolve_sites

    c = get_concept(concept_name)
    sites = resolve_sites(model, r"blocks\.\d+\.ln2\.hook_out")
    src = collect_activations(model, c.source_prompts, sites, progress=False)
    tgt = collect_activations(model, c.target_prompts, sites, progress=False)
    cos = torch.nn.functional.cosine_similarity
    rows = [f"### {concept_name} ({len(sites)} sites, {len(c.source_prompts)} + {len(c.target_prompts)} pool prompts)", "",
            "| draw | cos with the full pools' difference | cos between two seeds' draws | norm / the full pools' |",
            "|---|---|---|---|"]  # fmt: skip
    for paired in (False, True):
        diffs = []
        for seed in SEEDS:
            drawn = c.split(n_fit, seed, paired)
            i, j = [c.source_prompts.index(p) for p in drawn.source], [c.target_prompts.index(p) for p in drawn.target]
            diffs.append(torch.stack([tgt[s][j].mean(0) - src[s][i].mean(0) for s in sites]))
        full = torch.stack([tgt[s].mean(0) - src[s].mean(0) for s in sites])
        to_full = torch.stack([cos(d, full, dim=1) for d in diffs])  # [seed, site]
        across = torch.stack([cos(diffs[a], diffs[b], dim=1) for a in range(len(SEEDS)) for b in range(a)])
        norm = torch.stack([d.norm(dim=1) / full.norm(dim=1) for d in diffs])

        def cell(x: torch.Tensor) -> str:
            return f"{float(x.mean()):.2f} (sites {float(x.mean(0).min()):.2f}-{float(x.mean(0).max()):.2f})"

        rows.append(f"| {'paired' if paired else 'independent (default)'} | {cell(to_full)} | {cell(across)} | {cell(norm)} |")
    return [*rows, ""]


def main() -> None:
    _, model = script_setup()
    lines = ["# Fit draws' mean differences: independent against paired", "",
             "`python results/gate/paired_draws.py --threads 1`. SmolLM2-135M, unsteered, each prompt's mean "
             f"over its tokens; {len(SEEDS)} seeds of 32 + 32 prompts per draw kind; each cell is the mean over "
             "seeds (or seed pairs) and sites, with the range of the per-site means.", ""]  # fmt: skip
    for name in ("sentiment", "toxicity"):
        lines += table(name, model)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
