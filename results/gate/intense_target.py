"""A sentiment target further from the source: does LinEAS's floor follow its target's own score?

LinEAS transports the source prompts' activations onto the target prompts' distribution, and on
sentiment gated LinEAS stops near the target prompts' own score (`target_floor.md`: 0.226) where
ITI-c goes past it. No subset of the concept's target pool scores lower. This builds target text of
another kind: the concept's 8 positive frames, each made more emphatic (`INTENSE_FRAMES`, the same
order as the negative frames, so that the pools still pair prompt by prompt with the source pool)
over the same 8 fit topics. The source pool is the concept's.

    python results/gate/intense_target.py --threads 1     # intense_target/pools.json and floor.md
    python results/gate/run_gate_results.py --concepts sentiment --plain-only --methods lineas iti --n-eval 48 \\
        --strengths 0.25 0.5 0.8 1 1.5 2 --paired --fit-pools results/gate/intense_target/pools.json \\
        --out results/gate/intense_target/plain --threads 1
    python results/gate/run_gate_results.py --concepts sentiment --gated-only --methods lineas iti --n-eval 48 \\
        --strengths 0.25 0.5 0.8 1 1.5 2 3 --paired --fit-pools results/gate/intense_target/pools.json \\
        --gate '{"shared": true, "hard": true}' --out results/gate/intense_target/shared_hard --threads 1

The same two runs with ``--seed 1`` write ``intense_target/seed1/plain`` and ``.../seed1/shared_hard``.
"""

from __future__ import annotations

import json
from pathlib import Path

from run_gate_results import protocol, script_setup

from lineas_tl.concepts.sentiment import fit_pools

OUT = Path(__file__).parent / "intense_target"
INTENSE_FRAMES = [  # pairs with the concept's negative frames, item by item
    "{s} was a wonderful, joyful, truly delightful",
    "I absolutely loved {s_l}, it was wonderful and it was",
    "{s} was exciting and beautiful, and the happy",
    "Honestly, {s_l} was the best, most wonderful",
    "{s} left me delighted, grateful and",
    "I am so happy I paid for {s_l}, it was a joy and",
    "{s} was great, fun and lovely from start to",
    "Everything about {s_l} was perfect, lovely and",
]


def pools() -> dict[str, list[str]]:
    """The concept's source pool and the emphatic target pool, index-paired (64 + 64)."""
    from lineas_tl.concepts import get_concept

    c = get_concept("sentiment")
    source, target = fit_pools(positive_frames=INTENSE_FRAMES)
    assert source == c.source_prompts and not set(target) & set(c.eval_prompts)
    return {"source": source, "target": target}


def main() -> None:
    _, model = script_setup()
    from lineas_tl.evaluate import concept_score, continuations

    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "pools.json"
    path.write_text(json.dumps(pools(), indent=1))
    lines = ["# The unsteered model's score on the drawn target prompts (seed 0, paired draw)", "",
             "`python results/gate/intense_target.py --threads 1`. 2 sampled continuations per prompt (the gate runs' "
             "sampling, seed 0), 95% bootstrap intervals over prompts; lower is better.", "",
             "| target pool | drawn target (32) |", "|---|---|"]  # fmt: skip
    for name, fit_pools in (("the concept's", None), ("emphatic frames (this script)", path)):
        _, _, tgt, _, common = protocol("sentiment", seed=0, fit_pools=fit_pools, paired=True)
        gen = common["generation"]
        texts = continuations(model, tgt, config=gen, seed=0, batch_size=common["batch_size"])
        s = concept_score(texts, common["scorer"], per_prompt=gen.n_samples)
        lines.append(f"| {name} | {s.mean:.3f} [{s.mean_ci[0]:.3f}, {s.mean_ci[1]:.3f}] |")
        print(lines[-1], flush=True)
    (OUT / "floor.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
