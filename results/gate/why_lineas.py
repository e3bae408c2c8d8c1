"""Why gated LinEAS barely steers held-out sentiment prompts where gated Mean-AcT does.

Two measurements on the gate run's protocol (`run_gate_results.protocol`, seed 0), with gated LinEAS
fitted in two stages (maps as without a gate, probes after: the baselines' recipe), so the two
methods differ only in their maps:

1. **The gate's opening.** Per held-out prompt, the prompt driver's gate (frozen once the prompt is
   read) averaged over the active sites, for both methods; and the same on neutral text (held-out
   reference paragraphs, cut to the prompts' length). If LinEAS's probes opened less, its gated
   score would stay near the unsteered one for that reason alone.
2. **Coupling of the maps.** The gate switches sites on and off independently. LinEAS's maps are
   fitted together: each expects its upstream maps to have acted. Mean-AcT's are fitted site by
   site. Ungated, at strength 1, each method is scored with every site on, with a random half of
   its sites on (three draws), and with every site at strength 0.5 (the same total steering, spread
   evenly). If LinEAS loses more of its effect than Mean-AcT when half of its sites are off, its
   maps do not survive being gated site by site.
3. **What would change it: one gate per prompt, shared by every site.** Each held-out prompt is
   steered ungated at one strength for every site, the mean of its site gates (the prompt driver's
   values), times 1 and 2. This simulates a gate that decides *whether* to steer once per prompt
   and leaves the maps to compose as they were fitted (the library's gate is per site). And a hard
   per-prompt gate: strength 1 at every site where that mean is at least 1/2, else 0.

Scores: 12 held-out prompts x 2 sampled continuations (the gate run's; ``--n-eval`` for more), 95%
bootstrap intervals over prompts. Writes ``why_lineas/<concept>[-<n-eval>]/why.md`` and
``why.json``; the fitted steerers are saved beside them (``steerers/``, not committed) and reused
by later runs.

    python results/gate/why_lineas.py --concept sentiment --threads 1
    python results/gate/why_lineas.py --concept sentiment --threads 1 --n-eval 48   # the same fits, 48 prompts

Sites: the library's default, as the gate run's. `why_lineas/sentiment*` were made before stop 28
(2026-12-05), when that was every block's attention and MLP outputs (and LinEAS's default fit
`preset="fast"`); it is now `blocks.N.ln2.hook_out` on SmolLM2 (LinEAS: `paper_short`). This script
has no `--sites`: a fresh run fits at the new default, while a run that finds the old fits saved in
`steerers/` reuses them.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import time
from pathlib import Path
from typing import Any

import torch

from run_gate_results import HERE, protocol

METHODS = {"lineas": {"gate": {"end_to_end": False}}, "mean_act": {}}
HALF_DRAWS = 3


def openings(steerer: Any, texts: list[str]) -> list[float]:
    """Per text, the gate at its last token averaged over the active sites (the prompt driver's value)."""
    return [float(steerer.gates(text, strength=1.0).mean()[-1]) for text in texts]


def main() -> None:
    from lineas_tl import models
    from lineas_tl.evaluate import concept_score, continuations
    from lineas_tl.evaluate.fitting import fit_methods

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concept", default="sentiment")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="plumbing only: 8 prompts, 3 fit steps")
    ap.add_argument("--n-eval", type=int, default=None, help="held-out prompts scored (default: the gate run's 12)")
    ap.add_argument("--out", type=Path, default=HERE / "why_lineas")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model = models.load("smollm2-135m")
    concept, src, tgt, control, common = protocol(args.concept, quick=args.quick)
    names = [f"{m}+gate" for m in METHODS]
    kwargs = {f"{m}+gate": {**kw, **({"steps": 3, "warn": False} if args.quick and m == "lineas" else {})} for m, kw in METHODS.items()}
    out = args.out / (args.concept + ("-quick" if args.quick else ""))
    steerers = load_or_fit(model, out, names, lambda: fit_methods(model, src, tgt, names, kwargs, control=control, seed=0)[0])
    if args.n_eval:
        common["eval_prompts"] = concept.eval_prompts[: args.n_eval]
        out = out.with_name(f"{out.name}-{args.n_eval}")
    prompts, gen, scorer = common["eval_prompts"], common["generation"], common["scorer"]
    n_words = max(len(p.split()) for p in prompts)
    neutral = [" ".join(t.split()[:n_words]) for t in common["reference_texts"]]

    def summary(texts: list[str]) -> dict[str, float]:
        s = concept_score(texts, scorer, per_prompt=gen.n_samples)
        return {"score": s.mean, "lo": s.mean_ci[0], "hi": s.mean_ci[1]}

    def score(steerer: Any, strength: Any) -> dict[str, float]:
        return summary(continuations(model, prompts, steerer, strength, config=gen, seed=0, batch_size=common["batch_size"]))

    def shared(steerer: Any, gate: list[float], scale: float) -> dict[str, float]:
        """Each prompt alone, at one strength for every site: ``scale`` times its gate."""
        return summary([t for p, g in zip(prompts, gate) for t in continuations(model, [p], steerer, scale * g, config=gen, seed=0)])

    result: dict[str, Any] = {"unsteered": score(None, 0.0)}
    for method, name in zip(METHODS, names):
        gated = steerers[name]
        plain = copy.copy(gated)
        plain.gate_ = None  # the same maps, every token steered
        sites = list(gated.maps_)
        rng = random.Random(0)
        halves = [sorted(rng.sample(sites, len(sites) // 2)) for _ in range(HALF_DRAWS)]
        opening = openings(gated, prompts)
        result[method] = {
            "active_sites": len(gated.gate_.active_sites), "sites": len(sites),
            "opening_eval": opening, "opening_neutral": openings(gated, neutral),
            "shared_1": shared(plain, opening, 1.0), "shared_2": shared(plain, opening, 2.0),
            "hard": shared(plain, [float(g >= 0.5) for g in opening], 1.0),
            "gated_1": score(gated, 1.0), "all_1": score(plain, 1.0), "all_0.5": score(plain, 0.5),
            "half_1": [score(plain, {s: 1.0 for s in half}) for half in halves],
        }  # fmt: skip
        print(method, json.dumps({k: v for k, v in result[method].items() if not k.startswith("opening")}, default=float), flush=True)
    result["seconds"] = round(time.perf_counter() - started)
    result["command"] = (f"python results/gate/why_lineas.py --concept {args.concept} --threads {args.threads}"
                         + (" --quick" if args.quick else "") + (f" --n-eval {args.n_eval}" if args.n_eval else ""))
    out.mkdir(parents=True, exist_ok=True)
    (out / "why.json").write_text(json.dumps(result, indent=1, default=float))
    (out / "why.md").write_text(report(result, args.concept))
    print(report(result, args.concept))


def load_or_fit(model: Any, out: Path, names: list[str], fit: Any) -> dict[str, Any]:
    """The steerers saved by an earlier run in ``out/steerers``, or fitted now and saved there."""
    from lineas_tl import HookedSteerer

    folder = out / "steerers"
    if all((folder / n).exists() for n in names):
        return {n: HookedSteerer.load(folder / n, model) for n in names}
    steerers = fit()
    for n, s in steerers.items():
        s.save(folder / n)
    return steerers


def report(r: dict[str, Any], concept: str) -> str:
    def cell(s: dict[str, float]) -> str:
        return f"{s['score']:.3f} [{s['lo']:.3f}, {s['hi']:.3f}]"

    def mean(xs: list[float]) -> str:
        return f"{sum(xs) / len(xs):.2f} (min {min(xs):.2f}, max {max(xs):.2f})"

    lines = [f"# Why gated LinEAS barely steers ({concept})", "", f"Command: `{r['command']}` ({r['seconds']} s).", "",
             f"Unsteered: {cell(r['unsteered'])}.", "",
             "| method | active sites | gate on held-out prompts | gate on neutral text | gated, strength 1 | every site, 1 | every site, 0.5 | "
             + " | ".join(f"half the sites, 1 (draw {k})" for k in range(HALF_DRAWS)) + " | one gate per prompt, x1 | x2 | hard per-prompt gate |",
             "|---|---|---|---|---|---|---|" + "---|" * (HALF_DRAWS + 3)]  # fmt: skip
    for method in METHODS:
        m = r[method]
        lines.append(f"| {method} | {m['active_sites']}/{m['sites']} | {mean(m['opening_eval'])} | {mean(m['opening_neutral'])} | "
                     f"{cell(m['gated_1'])} | {cell(m['all_1'])} | {cell(m['all_0.5'])} | " + " | ".join(cell(h) for h in m["half_1"])
                     + f" | {cell(m['shared_1'])} | {cell(m['shared_2'])} | {cell(m['hard'])} |")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
