"""What does the gate cost per generated token? CPU, SmolLM2-135M, greedy, KV cache on.

Times ``steerer.generate`` for the same prompts with the ungated maps, and with each gate driver
on the same maps (a Mean-AcT steerer on every site, gate threshold 0 so every site is gated),
with the shared hard gate (``gate={"shared": True, "hard": True}``), with it voting from the first
sites only (``--vote-sites K``: ``vote_sites=K``, whose pass over the prompt stops after the K-th
site), and the unsteered model.
The runs are interleaved (one of each configuration per round, so a neighbour's load falls on all
of them alike) and each row is the median over ``--repeats`` rounds, of wall time and of this
process's CPU time (less sensitive to other jobs on a shared machine).
A last, instrumented run of each configuration times the steering hooks alone (CPU time inside
the outermost hook call, per generated token): the gate's own cost, whatever the machine's load.
Writes ``benchmarks/RESULTS_gate.md`` (``--out``).

    python benchmarks/bench_gate.py --new-tokens 12 --prompts 4 --repeats 7 --sites outputs

``--sites`` defaults to the library's default sites, ``blocks.N.ln2.hook_out`` (30 sites on
SmolLM2; the first section of ``RESULTS_gate.md``). The runs under "Before stop 28" were made when
those were every block's attention and MLP outputs (60 sites); ``--sites outputs`` reproduces them.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--new-tokens", type=int, default=12)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).with_name("RESULTS_gate.md")))
    ap.add_argument("--sites", default=None, help="site preset, e.g. 'outputs' (default: the library's)")
    ap.add_argument("--vote-sites", type=int, nargs="*", default=[], help="shared gates voting from the first K sites")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from lineas_tl import HookedSteerer, models
    from lineas_tl.concepts import get_concept

    model = models.load("smollm2-135m")
    c = get_concept("toxicity")
    src, tgt = c.split(32, seed=0)
    steerer = HookedSteerer(model, args.sites).fit(src, tgt, method="mean_act", control=c.control_prompts(32), gate={"threshold": 0.0}, progress=False)
    gate = steerer.gate_
    prompts = c.eval_prompts[: args.prompts]

    def configure(name: str) -> float:
        steerer.gate_ = None if name in ("unsteered", "ungated") else gate
        if steerer.gate_ is not None:  # "shared[K]": one 0/1 gate per prompt, read in a pass of its own
            shared = name.startswith("shared")
            gate.options.driver = "prompt" if shared else name
            gate.options.shared = gate.options.hard = shared
            gate.options.vote_sites = int(name[6:]) if shared and name != "shared" else None
        return 0.0 if name == "unsteered" else 1.0

    def once(name: str) -> tuple[float, float]:
        strength = configure(name)
        wall, cpu = time.perf_counter(), time.process_time()
        steerer.generate(prompts, strength, max_new_tokens=args.new_tokens, return_type="tokens", stop_at_eos=False)
        return (time.perf_counter() - wall) / args.new_tokens, (time.process_time() - cpu) / args.new_tokens

    names = ["unsteered", "ungated", "token", "running", "prompt", "shared", *(f"shared{k}" for k in args.vote_sites)]

    def hooks_cpu(name: str) -> float:
        """CPU seconds per generated token spent inside the steering hooks (outermost calls only)."""
        from lineas_tl.gate.state import GatedSteeringHook
        from lineas_tl.hooks import SteeringHook

        total, depth = [0.0], [0]

        def timed(call):
            def wrapper(self, act, *, hook):
                depth[0] += 1
                start = time.process_time()
                try:
                    return call(self, act, hook=hook)
                finally:
                    depth[0] -= 1
                    if depth[0] == 0:
                        total[0] += time.process_time() - start
            return wrapper

        saved = (GatedSteeringHook.__call__, SteeringHook.__call__)
        GatedSteeringHook.__call__, SteeringHook.__call__ = timed(saved[0]), timed(saved[1])
        try:
            once(name)
        finally:
            GatedSteeringHook.__call__, SteeringHook.__call__ = saved
        return total[0] / args.new_tokens

    for name in names:  # warm-up: first calls allocate and build caches
        once(name)
    times: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    for _ in range(args.repeats):
        for name in names:
            times[name].append(once(name))
    for n in names:
        print(n, "wall/CPU ms per token by round:", [(round(1000 * w), round(1000 * c)) for w, c in times[n]], flush=True)
    hooks = {n: hooks_cpu(n) for n in names}
    wall = {n: statistics.median(t[0] for t in times[n]) for n in names}
    cpu = {n: statistics.median(t[1] for t in times[n]) for n in names}
    label = {"unsteered": "unsteered (strength 0)", "ungated": "ungated maps",
             "shared": "gated, shared and hard (the prompt's vote, one extra pass over the prompt)",
             **{f"shared{k}": f"gated, shared and hard, the first {k} sites vote (the extra pass stops there)" for k in args.vote_sites}}
    rows = [
        f"| {label.get(n, f'gated, driver={n}')} | {1000 * wall[n]:.1f} | {100 * (wall[n] / wall['ungated'] - 1):+.1f}% "
        f"| {1000 * cpu[n]:.1f} | {100 * (cpu[n] / cpu['ungated'] - 1):+.1f}% "
        f"| {1000 * hooks[n]:.2f} | {100 * (hooks[n] - hooks['ungated']) / cpu['ungated']:+.1f}% |"
        for n in names
    ]
    cmd = "python benchmarks/bench_gate.py " + " ".join(sys.argv[1:])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "# The gate's cost per generated token",
        "",
        f"Command: `{cmd}`  ",
        f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average {load:.1f} at the end), "
        f"torch {torch.__version__}, {args.threads} thread(s); SmolLM2-135M, {args.prompts} prompts in one left-padded "
        f"batch, {args.new_tokens} greedy tokens, KV cache. Mean-AcT maps on all {len(steerer.maps_)} sites, every site "
        f"gated (threshold 0). Runs interleaved; median of {args.repeats} rounds.",
        "",
        "| run | wall ms per generated token (batch) | vs ungated maps | CPU ms per token | vs ungated maps "
        "| hooks' CPU ms per token | hooks' extra CPU vs ungated maps' token |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Whole-generation times move by 10-20% from round to round on a loaded machine (the unsteered",
        "row against the ungated maps shows the noise); the hooks' own CPU time is the gate's cost. What",
        "a gated site adds per forward call: one dot product per position (the probe is folded into one",
        "direction, logit = x.d + e, cached per probe), a sigmoid, and the blend z + g (T(z) - z); the",
        "positions' bookkeeping is done once per call for all sites, and the \"prompt\" driver reads",
        "no activation after the prompt (its gate is one number per row, cast and shaped once). A site",
        "whose probe is below the threshold is not attached at all. The shared gate's hooks only blend",
        "(the gate is one number per row); its cost is the unsteered pass over the prompt that reads the",
        "probes' vote before generating, which is in the whole-generation columns, not in the hooks'.",
        *(["With `vote_sites=K` only the first K sites' probes vote, and that pass stops after the K-th site."] if args.vote_sites else []),
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
