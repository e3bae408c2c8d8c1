"""What does the gate cost per generated token? CPU, SmolLM2-135M, greedy, KV cache on.

Times ``steerer.generate`` for the same prompts with the ungated maps, and with each gate driver
on the same maps (a Mean-AcT steerer on all 60 sites, gate threshold 0 so every site is gated),
plus the unsteered model; the best of ``--repeats`` runs each. Writes ``benchmarks/RESULTS_gate.md``.

    python benchmarks/bench_gate.py --new-tokens 16 --prompts 4 --repeats 3
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from lineas_tl import HookedSteerer, models
    from lineas_tl.concepts import get_concept

    model = models.load("smollm2-135m")
    c = get_concept("toxicity")
    src, tgt = c.split(32, seed=0)
    steerer = HookedSteerer(model).fit(src, tgt, method="mean_act", control=c.control_prompts(32), gate={"threshold": 0.0}, progress=False)
    gate = steerer.gate_
    prompts = c.eval_prompts[: args.prompts]

    def timed(strength: float) -> float:
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            steerer.generate(prompts, strength, max_new_tokens=args.new_tokens, return_type="tokens", stop_at_eos=False)
            best = min(best, time.perf_counter() - start)
        return best / args.new_tokens

    rows = [("unsteered (strength 0)", timed(0.0))]
    steerer.gate_ = None
    rows.append(("ungated maps", timed(1.0)))
    steerer.gate_ = gate
    for driver in ("token", "running", "prompt"):
        gate.options.driver = driver
        rows.append((f"gated, driver={driver}", timed(1.0)))
    ungated = rows[1][1]
    cmd = "python benchmarks/bench_gate.py " + " ".join(sys.argv[1:])
    lines = [
        "# The gate's cost per generated token",
        "",
        f"Command: `{cmd}`  ",
        f"CPU ({platform.processor() or platform.machine()}), torch {torch.__version__}, {args.threads} thread(s); "
        f"SmolLM2-135M, {args.prompts} prompts in one left-padded batch, {args.new_tokens} greedy tokens, KV cache, "
        f"best of {args.repeats}. Mean-AcT maps on all {len(steerer.maps_)} sites, every site gated (threshold 0).",
        "",
        "| run | ms per generated token (batch) | vs ungated maps |",
        "|---|---|---|",
        *[f"| {name} | {1000 * t:.1f} | {100 * (t / ungated - 1):+.1f}% |" for name, t in rows],
        "",
        "The gate adds one dot product per token and site (the probe's logit is affine, so the running",
        "and prompt means are means of logits) and the per-row state of two numbers per site.",
    ]
    out = Path(__file__).with_name("RESULTS_gate.md")
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
