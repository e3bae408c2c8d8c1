"""Issue 19's results: every method with and without its gate, per concept, on SmolLM2.

For each concept, runs :func:`lineas_tl.evaluate.compare` once with every method and its gated
variant (``<method>+gate``: the method fitted with ``control=`` and ``gate=True``) on the same fit
prompts, held-out prompts, reference text and sampling seeds, then writes the table, the
frontier summary (reference-text perplexity budgets +5/+10/+25%, with the continuations' perplexity under the
unsteered model) and the plot under ``results/gate/full/<concept>/``.

    python results/gate/run_gate_results.py --quick            # minutes on 2 CPU cores: plumbing only
    python results/gate/run_gate_results.py --concepts toxicity --sites outputs --threads 1   # 90-100 min per concept on 1 loaded CPU thread
    python results/gate/run_gate_results.py --concepts toxicity --gated-only --methods linear_act mean_act caa iti actadd \
        --strengths 1.5 2 3 4 --sites outputs --out results/gate/extended --threads 1   # the gated baselines past the main grid
    python results/gate/run_gate_results.py --concepts sentiment --gated-only --methods lineas --two-stage \
        --sites outputs --out results/gate/two_stage --threads 1              # gated LinEAS in two stages
    python results/gate/run_gate_results.py --concepts sentiment --gated-only --methods lineas mean_act iti \
        --gate '{"shared": true, "hard": true}' --sites outputs --out results/gate/shared_hard --threads 1   # one 0/1 gate per prompt
    python results/gate/run_gate_results.py --concepts sentiment --gated-only --methods lineas --sites paper \
        --lineas '{"preset": "paper"}' --gate '{"shared": true, "hard": true}' --out results/gate/shared_hard_paper --threads 1
                                                                          # the paper's recipe at its sites, gated
    python results/gate/run_gate_results.py --concepts toxicity --gated-only --methods lineas iti --n-eval 48 \
        --strengths 0.25 0.5 0.8 1 1.5 2 3 --gate '{"shared": true, "hard": true}' \
        --out results/gate/shared_hard_default_48 --threads 1            # the two lowest gated methods on 48 prompts
    python results/gate/run_gate_results.py --concepts toxicity --plain-only --methods lineas iti --n-eval 48 \
        --strengths 0.25 0.5 0.8 1 1.5 2 3 --out results/gate/plain_default_48 --threads 1   # and ungated
    python results/gate/run_gate_results.py --concepts toxicity --plain-only --methods lineas iti --n-eval 48 \
        --n-in-sample 32 --strengths 0.5 1 1.5 --out results/gate/in_sample_48 --threads 1    # in sample and held out
    python results/gate/run_gate_results.py --concepts sentiment --gated-only --methods lineas --n-eval 48 \
        --strengths 0.5 1 1.5 2 3 4 6 --paired --seed 0 --gate '{"shared": true, "hard": true}' \
        --sites iti_heads --out results/gate/iti_heads/seed0 --threads 1   # LinEAS at ITI-c's heads (stop 35)
    python results/gate/run_gate_results.py --concepts sentiment --gated-only --methods lineas --n-eval 48 \
        --strengths 0.5 1 1.5 2 3 4 6 --paired --seed 0 --gate '{"shared": true, "hard": true}' \
        --sites lineas_heads --out results/gate/lineas_heads/seed0 --threads 1   # LinEAS at its own heads (stop 36)
    python results/gate/run_gate_results.py --concepts sentiment --gated-only --methods iti --n-eval 48 \
        --strengths 0.1 0.15 0.2 0.25 0.5 0.8 1 1.5 2 --paired --seed 0 --gate '{"shared": true, "hard": true}' --sites lineas_heads \
        --heads-from results/gate/lineas_heads/seed0/sentiment/protocol.json --out results/gate/lineas_heads/iti/seed0 --threads 1
                                                                          # ITI-c at LinEAS's heads
    python results/gate/run_gate_results.py --concepts sentiment --gated-only --methods lineas --n-eval 48 \
        --strengths 0.5 1 1.5 2 3 4 6 --paired --seed 0 --gate '{"shared": true, "hard": true}' --sites lineas_heads \
        --heads-from results/gate/lineas_heads/seed0/sentiment/protocol.json --lineas '{"loss_on": "restricted"}' \
        --out results/gate/lineas_heads/loss_restricted/seed0 --threads 1   # the loss read only at those heads (stop 37)
    python results/gate/run_gate_results.py --concepts sentiment --gated-only --methods lineas --n-eval 48 \
        --strengths 0.5 1 1.5 2 3 4 6 --paired --seed 0 --gate '{"shared": true, "hard": true}' --sites lineas_heads \
        --heads-from results/gate/lineas_heads/seed0/sentiment/protocol.json --lineas '{"transform": "shift"}' \
        --out results/gate/lineas_heads/shift/seed0 --threads 1   # omega held at 1: a shift only (stop 38)

The full run uses the main job's protocol (:class:`lineas_tl.demo.DemoConfig`: 32+32 fit prompts,
12 held-out prompts x 2 sampled continuations at the paper's sampling, strengths 0..1 plus 1.5 and 2
for the distribution-matching methods, 12 Wikipedia paragraphs for perplexity, rows beyond +50%
perplexity not generated), so its plain rows are the main job's rows for the same seed and sites.

Without ``--sites`` every method but ITI-c and ActAdd (which choose their own sites) is fitted at the
library's default sites. Until stop 28 (2026-12-05) those were every block's attention and MLP
outputs, and LinEAS's default fit was ``preset="fast"``; every folder here but ``shared_hard_paper``
was made then, so the commands above that reproduce one pass ``--sites outputs`` (LinEAS's default
fit there is still ``fast``). Since then the default sites are ``blocks.N.ln2.hook_out`` on SmolLM2.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).parent
METHODS = ("lineas", "linear_act", "mean_act", "caa", "iti", "actadd")


def protocol(concept_name: str, quick: bool = False, seed: int = 0, strengths: tuple[float, ...] | None = None,
             n_eval: int | None = None, n_in_sample: int = 0, fit_pools: Path | None = None, paired: bool = False) -> tuple[Any, list[str], list[str], list[str], dict[str, Any]]:  # fmt: skip
    """The concept, its fit and control prompts, and ``compare``'s evaluation arguments for a run
    (``strengths``: sweep these and 0 only, for every method, instead of the main job's grid;
    ``n_eval``: held-out prompts continued, instead of the main job's 12; ``n_in_sample``: source
    fit prompts continued too, for the in-sample columns; ``fit_pools``: a JSON file of
    ``{"source": [...], "target": [...]}`` pools the fit prompts are drawn from, as
    :meth:`~lineas_tl.concepts.base.Concept.split` draws from the concept's own; ``paired``: the
    same pool indices on both sides, ``split(..., paired=True)``)."""
    import dataclasses

    from lineas_tl.concepts import get_concept, reference_text
    from lineas_tl.demo import DemoConfig
    from lineas_tl.evaluate.sampling import GenerationConfig

    c, cfg = get_concept(concept_name), DemoConfig()
    if fit_pools is not None:
        pools = json.loads(fit_pools.read_text())
        c = dataclasses.replace(c, source_prompts=pools["source"], target_prompts=pools["target"])
    n_fit, n_eval = (8, 3) if quick else (cfg.n_fit, n_eval or cfg.n_eval)
    src, tgt = c.split(n_fit, seed=seed, paired=paired)
    scorer = c.lower_is_better()
    common = dict(
        eval_prompts=c.eval_prompts[:n_eval], scorer=scorer,
        reference_texts=reference_text(4 if quick else cfg.n_reference, seed=seed, max_words=cfg.reference_words),
        strengths=strengths or ((0.5, 1.0) if quick else cfg.strengths),
        generation=GenerationConfig(max_new_tokens=8, n_samples=1) if quick else cfg.generation,
        n_in_sample=n_in_sample, seed=seed, progress=not quick, extra_strengths=() if quick or strengths else cfg.extra_strengths,
        batch_size=cfg.batch_size, max_scored_ppl_increase=cfg.max_scored_ppl_increase,
    )
    return c, src, tgt, c.control_prompts(n_fit, seed=seed), common


def run(concept_name: str, quick: bool, out_root: Path, seed: int = 0, methods: tuple[str, ...] = METHODS,
        gated_only: bool = False, strengths: tuple[float, ...] | None = None, two_stage: bool = False,
        gate: dict[str, Any] | None = None, sites: str | None = None, lineas: dict[str, Any] | None = None,
        n_eval: int | None = None, plain_only: bool = False, n_in_sample: int = 0, pooling: str = "mean",
        fit_pools: Path | None = None, paired: bool = False, heads_from: Path | None = None) -> None:  # fmt: skip
    import time

    from lineas_tl import models
    from lineas_tl.evaluate import GATE_SUFFIX, base_method, compare, frontier_summary
    from lineas_tl.evaluate.frontier import format_frontier
    from lineas_tl.evaluate.plot import plot_tradeoff

    started = time.perf_counter()
    model = models.load("smollm2-135m")
    if sites == "heads":  # LinEAS at ITI-c's sites: every block's attention heads (features (n_heads, d_head))
        sites = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    _, src, tgt, control, common = protocol(concept_name, quick, seed, strengths, n_eval, n_in_sample, fit_pools, paired)
    methods = ("lineas", "mean_act") if quick else methods
    names = [*([] if gated_only else methods), *([] if plain_only else (f"{m}{GATE_SUFFIX}" for m in methods))]
    kwargs: dict[str, dict[str, Any]] = {n: {"steps": 3, "warn": False} for n in names if base_method(n) == "lineas"} if quick else {}
    if two_stage:  # gated LinEAS as the baselines: ungated maps, then the probes
        kwargs.setdefault(f"lineas{GATE_SUFFIX}", {})["gate"] = {"end_to_end": False}
    for name in names if gate else ():  # every gated method with these gate options
        if name.endswith(GATE_SUFFIX):
            kwargs.setdefault(name, {})["gate"] = {**kwargs.get(name, {}).get("gate", {}), **gate}
    for name in names if lineas else ():  # LinEAS's own settings, gated or not (e.g. its preset)
        if base_method(name) == "lineas":
            kwargs.setdefault(name, {}).update(lineas)
    heads, selection = None, None
    if sites in ("iti_heads", "iti_heads_cv", "lineas_heads"):  # LinEAS moving only chosen heads (head_choice.py)
        from head_choice import lineas_heads, probe_heads

        from lineas_tl.methods.iti import head_masks

        if sites == "lineas_heads" and heads_from is not None:  # the heads (and selection) of an earlier run on the same draw
            earlier = json.loads(heads_from.read_text())
            heads, selection = earlier["iti_heads"], earlier["head_selection_fit"]
        elif sites == "lineas_heads":
            heads, history = lineas_heads(model, src, tgt, pooling, seed)
            selection = {k: history[k] for k in ("steps", "stop_reason", "identity_loss", "final_loss", "seconds", "group_norms")}
        else:
            heads = probe_heads(model, src, tgt, pooling, seed, splits=5 if sites == "iti_heads_cv" else 1)
        sites = list(masks := head_masks(model, heads))
        for name in names:  # LinEAS restricted to those heads; ITI-c shifting them (its own choice for iti_heads)
            if base_method(name) == "lineas":
                kwargs.setdefault(name, {})["restrict"] = masks
            elif base_method(name) == "iti":
                kwargs.setdefault(name, {})["heads"] = heads
    table = compare(model, src, tgt, names, method_kwargs=kwargs, control=control, sites=sites, pooling=pooling, **common)
    settings, histories = table.attrs["protocol"], table.attrs["histories"]
    out = out_root / concept_name
    out.mkdir(parents=True, exist_ok=True)
    column = "score_out"
    summary = frontier_summary(table, (0.05, 0.10, 0.25), column)
    table.to_csv(out / "comparison.csv", index=False)
    summary.to_csv(out / "frontier.csv", index=False)
    plot_tradeoff(table, out / "tradeoff.png", title=f"{concept_name}: with and without the gate")
    gate_acc = {m: h["gate"]["n_active"] for m, h in histories.items() if "gate" in h}
    support = {m: round(sum(h["support"].values()) / len(h["support"]), 5) for m, h in histories.items() if h.get("support")}
    (out / "frontier.md").write_text(format_frontier(summary).to_markdown(index=False) + "\n")
    (out / "protocol.json").write_text(json.dumps({
        "quick": quick, "seed": seed, "seconds": round(time.perf_counter() - started), "protocol": settings,
        "gate_active_sites": gate_acc, "gated_only": gated_only, "two_stage_lineas": two_stage,
        "gate_options": gate, "sites": sites, "lineas_options": lineas, "n_eval": n_eval, "plain_only": plain_only, "n_in_sample": n_in_sample, "pooling": pooling,
        "fit_pools": fit_pools and str(fit_pools), "paired": paired, "support_mean_over_sites": support,
        "iti_heads": heads, "head_selection_fit": selection, "fit_source": src, "fit_target": tgt}, indent=1, default=str))
    print(concept_name, "\n", format_frontier(summary).to_string(index=False), flush=True)


def script_args(concepts: list[str] | None = None, add_args: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """Parse ``--threads`` (and ``--concepts``, defaulting to ``concepts``, when given; and whatever
    ``add_args`` adds) and set the thread count."""
    ap = argparse.ArgumentParser()
    if concepts is not None:
        ap.add_argument("--concepts", nargs="+", default=concepts)
    ap.add_argument("--threads", type=int, default=1)
    if add_args is not None:
        add_args(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    return args


def script_setup(concepts: list[str] | None = None) -> tuple[argparse.Namespace, Any]:
    """The measuring scripts' preamble: :func:`script_args`, then load SmolLM2. Returns ``(args, model)``."""
    from lineas_tl import models

    return script_args(concepts), models.load("smollm2-135m")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--concepts", nargs="+", default=["toxicity", "sentiment", "style"])
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--gated-only", action="store_true", help="only the gated variants")
    ap.add_argument("--plain-only", action="store_true", help="only the ungated methods")
    ap.add_argument("--strengths", nargs="+", type=float, help="sweep only these (and 0), e.g. past the main grid")
    ap.add_argument("--two-stage", action="store_true", help="gated LinEAS in two stages (gate={'end_to_end': False})")
    ap.add_argument("--gate", type=json.loads, default=None, help='gate options for every gated method, e.g. \'{"shared": true, "hard": true}\'')
    ap.add_argument("--sites", default=None, help="site preset for every method but ITI-c and ActAdd, e.g. 'paper' or 'outputs' "
                    "(default: the library's; 'outputs' before stop 28), 'heads': every block's attn.hook_z, or 'iti_heads': "
                    "LinEAS moving only the heads an ITI-c fit on the same prompts selects (fit(..., restrict=head_masks(...))), "
                    "or 'iti_heads_cv': the heads best over five probe splits, or 'lineas_heads': the heads a head-grouped "
                    "sparse LinEAS fit moves most (head_choice.py)")
    ap.add_argument("--lineas", type=json.loads, default=None, help='LinEAS fit options, e.g. \'{"preset": "paper"}\'')
    ap.add_argument("--n-eval", type=int, default=None, help="held-out prompts continued (default: the main job's 12)")
    ap.add_argument("--n-in-sample", type=int, default=0, help="source fit prompts continued for the in-sample columns")
    ap.add_argument("--pooling", default="mean", help="the steerer's pooling for every method (the paper's: mean)")
    ap.add_argument("--fit-pools", type=Path, default=None,
                    help='JSON {"source": [...], "target": [...]}: draw the fit prompts from these pools instead of the concept\'s')
    ap.add_argument("--paired", action="store_true", help="draw the fit prompts in matched pairs (split(..., paired=True))")
    ap.add_argument("--heads-from", type=Path, default=None, help="with --sites lineas_heads: reuse the heads of this earlier "
                    "run's protocol.json (same concept, seed and draw) instead of fitting the selection again")
    args = ap.parse_args()
    torch.set_num_threads(args.threads or (1 if args.quick else torch.get_num_threads()))
    out = args.out or (HERE / ("quick" if args.quick else "full"))
    for name in args.concepts:
        run(name, args.quick, out, seed=args.seed, methods=tuple(args.methods), gated_only=args.gated_only,
            strengths=args.strengths and tuple(args.strengths), two_stage=args.two_stage, gate=args.gate,
            sites=args.sites, lineas=args.lineas, n_eval=args.n_eval, plain_only=args.plain_only, n_in_sample=args.n_in_sample, pooling=args.pooling,
            fit_pools=args.fit_pools, paired=args.paired, heads_from=args.heads_from)


if __name__ == "__main__":
    main()
