"""Issue 19's results: every method with and without its gate, per concept, on SmolLM2.

For each concept, runs :func:`lineas_tl.evaluate.compare` twice on the same fit prompts, held-out
prompts, reference text and sampling seeds: once plain, once with ``control=`` and ``gate=True``
(the gated rows are renamed ``<method>+gate``), then writes the merged table, the frontier summary
(reference-text perplexity budgets +5/+10/+25%, with the continuations' perplexity under the
unsteered model) and the plot under ``results/gate/<concept>/``.

    python results/gate/run_gate_results.py --quick            # minutes on 2 CPU cores: plumbing only
    python results/gate/run_gate_results.py --concepts toxicity --threads 1   # ~30 min per concept, 1 CPU thread

The full run uses the main job's protocol (:class:`lineas_tl.demo.DemoConfig`: 32+32 fit prompts,
12 held-out prompts x 2 sampled continuations at the paper's sampling, strengths 0..1 plus 1.5 and 2
for the distribution-matching methods, 12 Wikipedia paragraphs for perplexity, rows beyond +50%
perplexity not generated), so its plain rows are the main job's rows for the same seed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).parent
METHODS = ("lineas", "linear_act", "mean_act", "caa", "iti", "actadd")


def protocol(concept_name: str, quick: bool = False, seed: int = 0) -> tuple[Any, list[str], list[str], list[str], dict[str, Any]]:
    """The concept, its fit and control prompts, and ``compare``'s evaluation arguments for a run."""
    from lineas_tl.concepts import get_concept, reference_text
    from lineas_tl.demo import DemoConfig
    from lineas_tl.evaluate.sampling import GenerationConfig

    c, cfg = get_concept(concept_name), DemoConfig()
    n_fit, n_eval = (8, 3) if quick else (cfg.n_fit, cfg.n_eval)
    src, tgt = c.split(n_fit, seed=seed)
    common = dict(
        eval_prompts=c.eval_prompts[:n_eval], scorer=c.scorer,
        reference_texts=reference_text(4 if quick else cfg.n_reference, seed=seed, max_words=cfg.reference_words),
        strengths=(0.5, 1.0) if quick else cfg.strengths,
        generation=GenerationConfig(max_new_tokens=8, n_samples=1) if quick else cfg.generation,
        n_in_sample=0, seed=seed, progress=not quick, extra_strengths=() if quick else cfg.extra_strengths,
        batch_size=cfg.batch_size, max_scored_ppl_increase=cfg.max_scored_ppl_increase,
    )
    return c, src, tgt, c.control_prompts(n_fit, seed=seed), common


def run(concept_name: str, quick: bool, out_root: Path, seed: int = 0, methods: tuple[str, ...] = METHODS) -> None:
    import time

    import pandas as pd

    from lineas_tl import models
    from lineas_tl.evaluate import compare, frontier_summary
    from lineas_tl.evaluate.frontier import format_frontier
    from lineas_tl.evaluate.plot import plot_tradeoff

    started = time.perf_counter()
    model = models.load("smollm2-135m")
    c, src, tgt, control, common = protocol(concept_name, quick, seed)
    methods = ("lineas", "mean_act") if quick else methods
    kwargs = {"lineas": {"steps": 3, "warn": False}} if quick else {}
    plain = compare(model, src, tgt, methods, method_kwargs=kwargs, **common)
    gated_kwargs = {m: {**kwargs.get(m, {}), "control": control, "gate": True} for m in methods}
    gated = compare(model, src, tgt, methods, method_kwargs=gated_kwargs, **common)
    settings, histories = plain.attrs["protocol"], gated.attrs.get("histories", {})
    plain.attrs, gated.attrs = {}, {}  # attrs hold DataFrames, which pandas' concat cannot compare
    gated = gated[gated["method"] != "ceiling"].assign(method=lambda t: t["method"] + "+gate")
    table = pd.concat([plain, gated], ignore_index=True)
    out = out_root / concept_name
    out.mkdir(parents=True, exist_ok=True)
    column = "score_out"
    if c.goal == "increase":  # the frontier minimises: style's P(Shakespeare) is flipped
        for col in (column, f"{column}_lo", f"{column}_hi"):
            table[col] = 1 - table[col]
        table[[f"{column}_lo", f"{column}_hi"]] = table[[f"{column}_hi", f"{column}_lo"]].to_numpy()
    summary = frontier_summary(table, (0.05, 0.10, 0.25), column)
    table.to_csv(out / "comparison.csv", index=False)
    summary.to_csv(out / "frontier.csv", index=False)
    plot_tradeoff(table, out / "tradeoff.png", title=f"{concept_name}: with and without the gate")
    gate_acc = {m: h.get("gate", {}).get("n_active") for m, h in histories.items()}
    (out / "frontier.md").write_text(format_frontier(summary).to_markdown(index=False) + "\n")
    (out / "protocol.json").write_text(json.dumps({
        "quick": quick, "seed": seed, "seconds": round(time.perf_counter() - started), "protocol": settings,
        "gate_active_sites": gate_acc}, indent=1, default=str))
    print(concept_name, "\n", format_frontier(summary).to_string(index=False), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--concepts", nargs="+", default=["toxicity", "sentiment", "style"])
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads or (1 if args.quick else torch.get_num_threads()))
    out = args.out or (HERE / ("quick" if args.quick else "full"))
    for name in args.concepts:
        run(name, args.quick, out, seed=args.seed, methods=tuple(args.methods))


if __name__ == "__main__":
    main()
