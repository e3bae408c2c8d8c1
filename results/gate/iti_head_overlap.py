"""How much ITI-c's head choice depends on its probes' train/validation split: `iti_head_overlap.md`.

ITI-c ranks SmolLM2's 270 heads by the held-out accuracy of a probe fitted on a 4:1 split of the fit
prompts, and shifts the best 13. For each paired fit draw (seeds 1-8, the prompts of
`run_gate_results.py --paired --seed S`), this fits ITI-c twice on the same prompts, its probes split
with seed S (as `compare(..., seed=S)` does) and with seed 0, and counts the heads both choose.

    python results/gate/iti_head_overlap.py --threads 1
"""

from __future__ import annotations

from head_choice import probe_heads
from run_gate_results import HERE, protocol, script_setup


def main() -> None:
    _, model = script_setup()
    lines = ["# ITI-c's heads under two probe splits of the same prompts (sentiment, paired draws)", "",
             "`python results/gate/iti_head_overlap.py --threads 1`; 13 heads of 270 each.", "",
             "| prompts of seed | heads chosen with both splits (S and 0) |", "|---|---|"]  # fmt: skip
    for seed in range(1, 9):
        _, src, tgt, _, _ = protocol("sentiment", seed=seed, paired=True)
        heads = [{tuple(h) for h in probe_heads(model, src, tgt, "mean", s)} for s in (seed, 0)]
        lines.append(f"| {seed} | {len(heads[0] & heads[1])} |")
        print(lines[-1], flush=True)
    (HERE / "iti_head_overlap.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
