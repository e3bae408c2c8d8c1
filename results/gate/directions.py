"""Gated LinEAS's shift and ITI-c's at the same heads: one intervention to first order, or two?

`budget_curve.py` finds LinEAS (shift only, at its own heads) and ITI-c level within +10% of the
continuations' perplexity and apart only from +15-25% on. Both are translations of the same kind:
at strength ``s`` a head's output moves by ``s * b`` (LinEAS's fitted shift) or ``s * alpha sigma
theta`` (ITI-c's probe normal). At small strengths a translation's effect is first order in its
vector, so two translations whose vectors are parallel are one intervention at two scales. This
refits both as `run_gate_results.py` does (`fit_methods`, the shared hard gate) at LinEAS's own
heads (``--heads-from`` of the runs in `paired/ACROSS_DRAWS*.md`, the same paired draws), and
compares their vectors:

- the cosine between the two 13-head vectors (every moved head's shift, concatenated), and per head;
- the ratio of LinEAS's norm to ITI-c's: LinEAS at strength ``s`` moves as far as ITI-c at
  ``s`` times it;
- the share of each method's squared norm on each head, and the correlation of those shares.

Writes `directions/<concept>_seed<S>.json` and `directions.md` (every draw measured so far).

    python results/gate/directions.py --concepts toxicity sentiment --seeds 0 1 --threads 1   # ~15 min per fit draw
"""

from __future__ import annotations

import json
import math

import torch
from run_gate_results import HERE, protocol, script_args

HEADS = {"toxicity": "lineas_heads/toxicity/shift/seed{seed}/toxicity/protocol.json",
         "sentiment": "lineas_heads/seed{seed}/sentiment/protocol.json"}  # fmt: skip
"""concept -> the run whose heads (LinEAS's own) both methods move."""
GATE = {"shared": True, "hard": True}
OUT = HERE / "directions"
"""one JSON per (concept, seed) measured; `directions.md` tabulates them all."""


def head_shifts(steerer, heads: list[list[int]]) -> torch.Tensor:
    """``[n_heads, d_head]``: the shift each chosen head's output gets at strength 1."""
    from lineas_tl.sites import block_index

    site = {block_index(s): s for s in steerer.maps_}
    return torch.stack([steerer.maps_[site[layer]].bias.detach()[head] for layer, head in heads])


def compare_shifts(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """How close two ``[n_heads, d_head]`` translations are: joint and per-head cosines, norm ratio, and
    the correlation of their per-head shares of squared norm."""
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    share_a, share_b = a.pow(2).sum(-1) / a.pow(2).sum(), b.pow(2).sum(-1) / b.pow(2).sum()
    return dict(
        joint_cosine=float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)),
        head_cosine_median=float(cos.median()), head_cosine_min=float(cos.min()),
        norm_ratio=float(a.norm() / b.norm()),
        share_correlation=float(torch.corrcoef(torch.stack([share_a, share_b]))[0, 1]),
    )  # fmt: skip


def main() -> None:
    def add(ap):
        ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
        ap.add_argument("--steps", type=int, default=None, help="cap LinEAS's steps (plumbing checks only)")

    args = script_args(["toxicity", "sentiment"], add)
    from lineas_tl import models
    from lineas_tl.evaluate.fitting import fit_methods
    from lineas_tl.methods.iti import head_masks

    model = models.load("smollm2-135m")
    for concept in args.concepts:
        for seed in args.seeds:
            _, src, tgt, control, _ = protocol(concept, seed=seed, paired=True)
            heads = json.loads((HERE / HEADS[concept].format(seed=seed)).read_text())["iti_heads"]
            masks = head_masks(model, heads)
            steps = {} if args.steps is None else {"steps": args.steps, "warn": False}
            kwargs = {"lineas+gate": {"gate": GATE, "restrict": masks, "transform": "shift", **steps}, "iti+gate": {"gate": GATE, "heads": heads}}
            fitted, _ = fit_methods(model, src, tgt, list(kwargs), kwargs, control=control, sites=list(masks), seed=seed)  # as compare() fits them
            lineas, iti = fitted["lineas+gate"], fitted["iti+gate"]
            row = dict(concept=concept, seed=seed, steps=lineas.history_["steps"], **compare_shifts(head_shifts(lineas, heads), head_shifts(iti, heads)))
            assert all(math.isfinite(v) for v in row.values() if isinstance(v, float)), row
            print(row, flush=True)
            if args.steps is None:
                OUT.mkdir(exist_ok=True)
                (OUT / f"{concept}_seed{seed}.json").write_text(json.dumps(row, indent=1))
    write_table()


def _row(r: dict) -> str:
    cells = (r["concept"], r["seed"], r["steps"], f"{r['joint_cosine']:.3f}", f"{r['head_cosine_median']:.3f} / {r['head_cosine_min']:.3f}",
             f"{r['norm_ratio']:.3f}", f"{r['share_correlation']:.3f}")  # fmt: skip
    return "| " + " | ".join(map(str, cells)) + " |"


def write_table() -> None:
    """`directions.md` from every fit draw measured so far (`directions/*.json`)."""
    rows = sorted((json.loads(p.read_text()) for p in OUT.glob("*.json")), key=lambda r: (r["concept"], r["seed"]))
    text = "\n".join([
        "# Gated LinEAS's shift against ITI-c's at LinEAS's own heads", "",
        "`python results/gate/directions.py --concepts C --seeds S --threads 1` (its docstring says what it measures). "
        "Both fitted with the shared hard gate on the paired draw of that seed.", "",
        "| concept | seed | LinEAS steps | joint cosine | per-head cosine: median / min | LinEAS norm / ITI-c norm | correlation of per-head shares |",
        "|---|---|---|---|---|---|---|", *map(_row, rows)])  # fmt: skip
    (HERE / "directions.md").write_text(text + "\n")
    print(text)

if __name__ == "__main__":
    main()
