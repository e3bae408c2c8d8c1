"""The ``lineas-tl`` command: fit a steerer, generate with it, compare methods, run the demo.

Examples::

    lineas-tl fit --model smollm2-135m --source toxic.txt --target kind.txt --out steerers/detox
    lineas-tl calibrate --steerer steerers/detox --max-ppl-increase 0.05
    lineas-tl generate --steerer steerers/detox --prompt "You are a" --strength calibrated
    lineas-tl compare --model smollm2-135m --concept toxicity --method lineas --method caa --out results/
    lineas-tl info --steerer steerers/detox
    lineas-tl frontier --table results/toxicity/comparison.csv --select calibrated
    lineas-tl export --steerer steerers/detox --strength calibrated --out smollm2-detox.gguf
    lineas-tl demo --quick

Prompt files hold one prompt per line (blank lines ignored) or, with a ``.json`` suffix, a JSON list
of strings. ``--model`` is an embedded model name (``smollm2-135m``), a ``.gguf`` file or a local
Hugging Face model directory (weights, config and tokenizer); nothing is downloaded. Commands that
take a steerer (``--steerer DIR``) default ``--model`` to the model it was fitted on. List options
are repeated flags (``--method lineas --method caa``). On bad input every command prints
a one-line ``error: ...`` on stderr and exits with status 1 (set ``LINEAS_TL_DEBUG=1`` for the
traceback).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from lineas_tl import cli_inspect, cli_serve  # noqa: F401  (register info, frontier, export, calibrate)
from lineas_tl.cli_support import (
    CLIError,
    DeviceOpt,
    ModelOpt,
    SteererModelOpt,
    app,
    check_hparams,
    friendly,
    load_model,
    parse_params,
    parse_strength,
    parse_strengths,
    read_prompts,
    split_list,
    steerer_model,
)

__all__ = ["app", "main", "read_prompts"]


@app.command()
@friendly
def fit(
    source: Annotated[
        Path, typer.Option(help="Prompts with the behaviour to steer away from (one per line, or .json).")
    ],
    target: Annotated[Path, typer.Option(help="Prompts with the behaviour to steer towards.")],
    model: ModelOpt = "smollm2-135m",
    method: Annotated[
        str,
        typer.Option(
            help="Fitting method: lineas (default), linear_act, mean_act, caa, iti or actadd (see "
            "lineas_tl.methods)."
        ),
    ] = "lineas",
    steps: Annotated[
        int | None, typer.Option(help="Most optimisation steps (LinEAS: 300 by default).")
    ] = None,
    preset: Annotated[
        str | None, typer.Option(help="LinEAS recipe: auto (default: paper_short, the paper's SGD lr 0.1 stopped at 300 "
                          "steps, at norm outputs; fast elsewhere), fast, paper (1000 steps for a language model), "
                          "authors_yaml (Adam lr 1e-3). See docs/fitting.md.")
    ] = None,
    sites: Annotated[
        list[str] | None,
        typer.Option(
            "--sites",
            "--site",
            help="Hook name, alias, regex or preset (repeatable). Presets: outputs (every block's "
            "hook_attn_out and hook_mlp_out), norms (layer-norm outputs), paper (the paper's). Default: the paper's: "
            "ln2 in a pre-LN model (GPT-2, Llama, SmolLM2), the post norms (ln1_post/ln2_post) in Gemma-2/3.",
        ),
    ] = None,
    pooling: Annotated[str, typer.Option(help="Pooling over tokens: mean, last or all.")] = "mean",
    seed: Annotated[int | None, typer.Option(help="Seed (methods that take one).")] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            "-p",
            help="Extra hyper-parameter KEY=VALUE (repeatable), e.g. -p lr=0.003 -p gamma=0.01 (LinEAS "
            "sparsity, >= 0; default 0 = off; larger values return more coordinates to the identity).",
        ),
    ] = None,
    control: Annotated[
        Path | None, typer.Option(help="Neutral prompts steering should leave alone (LinEAS's control term; the gate's).")
    ] = None,
    gate: Annotated[
        bool, typer.Option(help="Gate each token's steering with a per-site probe of source vs --control prompts.")
    ] = False,
    gate_option: Annotated[
        list[str] | None,
        typer.Option("--gate-option", help="A gate option KEY=VALUE (repeatable; implies --gate), e.g. "
                     "--gate-option shared=true --gate-option hard=true: one 0/1 gate per prompt for every site."),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to save the steerer to.")] = Path("steerer"),
    device: DeviceOpt = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Fit a steerer from source and target prompt files and save it to a directory."""
    from lineas_tl.methods.convergence import describe_fit
    from lineas_tl.steerer import HookedSteerer

    src, tgt = read_prompts(source), read_prompts(target)
    hparams = parse_params(param)
    if steps is not None:
        hparams["steps"] = steps
    if seed is not None:
        hparams["seed"] = seed
    if preset is not None:
        hparams["preset"] = preset
    check_hparams(method, hparams)
    lm = load_model(model, device)
    steerer = HookedSteerer(lm, sites or None, pooling=pooling)  # type: ignore[arg-type]
    ctrl = read_prompts(control) if control is not None else None
    gate_options = parse_params(gate_option, "--gate-option")
    steerer.fit(src, tgt, method=method, progress=progress, control=ctrl, gate=gate_options or gate, **hparams)
    steerer.save(out)
    support = steerer.support()
    mean_support = sum(support.values()) / max(len(support), 1)
    report = describe_fit(steerer.history_)
    tail = f"; {report}" if report else ""
    gated = f"; {steerer.gate_.describe()}" if steerer.gate_ is not None else ""
    typer.echo(f"saved {method} steerer ({len(steerer.maps_)} sites, support {mean_support:.0%}{tail}{gated}) to {out}")


@app.command()
@friendly
def generate(
    steerer: Annotated[Path, typer.Option("--steerer", "-s", help="Directory of a saved steerer.")],
    model: SteererModelOpt = None,
    prompt: Annotated[list[str] | None, typer.Option("--prompt", help="A prompt (repeatable).")] = None,
    prompts: Annotated[Path | None, typer.Option(help="File of prompts (one per line, or .json).")] = None,
    strength: Annotated[
        str,
        typer.Option(help="Steering strength: 0 = off, 1 = full map, >1 extrapolates, or 'calibrated'."),
    ] = "1.0",
    inverse: Annotated[
        bool, typer.Option(help="Apply the inverse map (induce the concept instead of removing it).")
    ] = False,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate per prompt.")] = 30,
    sample: Annotated[bool, typer.Option(help="Sample instead of greedy decoding.")] = False,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    fold: Annotated[bool, typer.Option(help="Fold the maps into the weights (no hooks) instead of hooking.")] = False,
    unsteered: Annotated[bool, typer.Option(help="Also print the unsteered continuation, for comparison.")] = False,
    batch_size: Annotated[int, typer.Option(help="Prompts per generation batch.")] = 8,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list of records instead of text.")] = False,
    device: DeviceOpt = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Generate continuations with a saved steerer active."""
    import torch
    from tqdm.auto import tqdm

    from lineas_tl.calibrate import resolve_strength
    from lineas_tl.io import read_metadata
    from lineas_tl.steerer import HookedSteerer

    texts = list(prompt or []) + (read_prompts(prompts) if prompts is not None else [])
    if not texts:
        raise CLIError("no prompts: pass --prompt TEXT (repeatable) or --prompts FILE")
    if max_new_tokens < 1 or batch_size < 1:
        raise CLIError("--max-new-tokens and --batch-size must be at least 1")
    asked = parse_strength(strength)
    meta = read_metadata(steerer)  # fail fast, before loading the model
    lm = load_model(steerer_model(meta, model), device)
    st = HookedSteerer.load(steerer, lm)
    value = float(resolve_strength(st, asked, inverse))
    kw: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": sample, "return_type": "continuation"}

    def no_hooks(_tracker: Any) -> list[Any]:
        return []

    def run(batch: list[str], steered: bool) -> list[str]:
        torch.manual_seed(seed)
        if not steered:
            return st.runner.generate(batch, no_hooks, **kw)
        if fold:
            with st.fold(value, inverse=inverse):  # the plain model, its weights rewritten
                return st.runner.generate(batch, no_hooks, **kw)
        return st.generate(batch, strength=value, inverse=inverse, **kw)

    records: list[dict[str, Any]] = []
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc="generate", disable=not progress or len(starts) < 2, file=sys.stderr):
        batch = texts[start : start + batch_size]
        steered = run(batch, True)
        base = run(batch, False) if unsteered else [None] * len(batch)
        for p, s, b in zip(batch, steered, base, strict=True):
            rec: dict[str, Any] = {"prompt": p, "strength": value, "inverse": inverse, "steered": s}
            if unsteered:
                rec["unsteered"] = b
            records.append(rec)
    if as_json:
        typer.echo(json.dumps(records, indent=1, ensure_ascii=False))
        return
    for rec in records:
        typer.echo(f"> {rec['prompt']}")
        typer.echo(f"  steered ({value:g}{', inverse' if inverse else ''}): {rec['prompt']}{rec['steered']}")
        if unsteered:
            typer.echo(f"  unsteered: {rec['prompt']}{rec['unsteered']}")


@app.command()
@friendly
def compare(
    model: ModelOpt = "smollm2-135m",
    concept: Annotated[
        str | None,
        typer.Option(help="Built-in concept (toxicity, sentiment, style): prompt sets and judge."),
    ] = None,
    source: Annotated[Path | None, typer.Option(help="Source prompt file (overrides the concept's).")] = None,
    target: Annotated[Path | None, typer.Option(help="Target prompt file (overrides the concept's).")] = None,
    eval_prompts: Annotated[Path | None, typer.Option(help="Held-out prompt file for out-of-sample scores.")] = None,
    method: Annotated[
        list[str] | None,
        typer.Option(
            "--method",
            help="Method to compare (repeatable). Default: lineas, linear_act, mean_act, caa, iti, actadd. "
            "NAME+gate adds the method with a gate (needs --concept or --control).",
        ),
    ] = None,
    control: Annotated[
        Path | None, typer.Option(help="Control prompt file for gated methods (default: the concept's control prompts).")
    ] = None,
    gate_option: Annotated[
        list[str] | None,
        typer.Option("--gate-option", help="A gate option KEY=VALUE for every NAME+gate method (repeatable), "
                     "e.g. --gate-option shared=true --gate-option hard=true."),
    ] = None,
    strengths: Annotated[
        list[str] | None,
        typer.Option(
            "--strength",
            "--strengths",
            help="A strength to sweep (repeatable; default 0, 0.1, ..., 1). 0 = unsteered, 1 = the fitted map.",
        ),
    ] = None,
    extra_strengths: Annotated[
        list[str] | None,
        typer.Option(
            "--extra-strength",
            "--extra-strengths",
            help="A strength past 1 (extrapolation) for lineas, linear_act and mean_act (repeatable; "
            "default 1.5 and 2; 'none' for none).",
        ),
    ] = None,
    steps: Annotated[int | None, typer.Option(help="LinEAS optimisation steps.")] = None,
    n_fit: Annotated[int, typer.Option(help="Fit prompts per side drawn from the concept.")] = 32,
    paired: Annotated[bool, typer.Option(help="Draw the concept's fit prompts in matched pairs (toxicity, sentiment).")] = False,
    max_new_tokens: Annotated[int, typer.Option(help="Length of each continuation.")] = 32,
    samples: Annotated[int, typer.Option(help="Sampled continuations per prompt.")] = 3,
    greedy: Annotated[
        bool, typer.Option(help="Greedy decoding (default: T=1, top_p 0.3, repetition penalty 1.2).")
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed for fitting and sampling.")] = 0,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write comparison.csv and tradeoff.png here.")] = None,
    device: DeviceOpt = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Fit several methods on the same prompts and tabulate concept score against perplexity."""
    from lineas_tl import evaluate

    src = read_prompts(source) if source is not None else None
    tgt = read_prompts(target) if target is not None else None
    evals = read_prompts(eval_prompts) if eval_prompts is not None else None
    ctrl = read_prompts(control) if control is not None else None
    scorer, held_out_target = None, None
    if samples < 1 or max_new_tokens < 1:
        raise CLIError("--samples and --max-new-tokens must be at least 1")
    generation = (
        evaluate.GenerationConfig.greedy(max_new_tokens)
        if greedy
        else evaluate.PAPER.with_(max_new_tokens=max_new_tokens, n_samples=samples)
    )
    if concept is not None:
        from lineas_tl.concepts import get_concept

        c = get_concept(concept)
        split = c.split(n_fit=n_fit, seed=seed, paired=paired)
        src, tgt = src or split.source, tgt or split.target
        evals = evals if evals is not None else c.eval_prompts
        held_out_target = [p for p in c.target_prompts if p not in set(tgt)] or None
        scorer = c.lower_is_better()
        ctrl = ctrl if ctrl is not None else c.control_prompts(n_fit, seed=seed)
    if src is None or tgt is None:
        raise CLIError("pass --concept NAME, or both --source and --target prompt files")
    methods = split_list(method, "--method") or list(evaluate.DEFAULT_METHODS)
    method_kwargs = {"lineas": {"steps": steps}} if steps is not None and "lineas" in methods else {}
    gate_options = parse_params(gate_option, "--gate-option")
    if gate_options and not any(map(evaluate.is_gated, methods)):
        raise CLIError("--gate-option applies to gated methods: add one, e.g. --method lineas+gate")
    for name in filter(evaluate.is_gated, methods if gate_options else []):
        method_kwargs.setdefault(name, {})["gate"] = gate_options
    lm = load_model(model, device)
    table = evaluate.compare(
        lm,
        src,
        tgt,
        methods=methods,
        strengths=parse_strengths(",".join(split_list(strengths, "--strength")) or _STRENGTHS),
        eval_prompts=evals,
        scorer=scorer,
        method_kwargs=method_kwargs or None,
        control=ctrl if any(map(evaluate.is_gated, methods)) else None,
        extra_strengths=_extra_strengths(extra_strengths),
        generation=generation,
        target_eval_prompts=held_out_target,
        seed=seed,
        out_dir=out,
        progress=progress,
    )
    cols = ["method", "strength", "score_in", "score_out", "score_out_lo", "score_out_hi", "gap", "perplexity"]
    typer.echo(table[[c for c in cols if c in table.columns]].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    typer.echo("\nfrontier (best score within each perplexity budget):")
    typer.echo(evaluate.format_frontier(table.attrs["frontier"]).to_string(index=False))
    if out is not None:
        typer.echo(f"wrote {out / 'comparison.csv'}, {out / 'frontier.csv'} and {out / 'tradeoff.png'}")


_STRENGTHS = "0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1"


def _extra_strengths(values: list[str] | None) -> list[float]:
    if values is None:
        return [1.5, 2.0]
    if [v.strip().lower() for v in values] in (["none"], [""]):  # '' was the older spelling
        return []
    return parse_strengths(",".join(split_list(values, "--extra-strength")))


@app.command()
@friendly
def demo(
    model: ModelOpt = "smollm2-135m",
    concept: Annotated[str, typer.Option(help="Concept to steer (toxicity, sentiment, style).")] = "toxicity",
    steps: Annotated[int | None, typer.Option(help="LinEAS optimisation steps.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Directory for the demo's outputs.")] = None,
    quick: Annotated[bool, typer.Option(help="A fast, smaller run (about a minute; checks, not rankings).")] = False,
    full: Annotated[
        bool, typer.Option(help="A larger run: 32 held-out prompts x 3 samples, in-sample columns (about 4x slower).")
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed for the fit prompts, fitting and sampling.")] = 0,
    method: Annotated[
        list[str] | None,
        typer.Option("--method", help="Methods to compare (repeatable); default all six. NAME+gate: gated, "
                     "with the concept's control prompts (e.g. --method lineas --method lineas+gate)."),
    ] = None,
    time_limit: Annotated[
        float | None,
        typer.Option(help="Minutes: cut the strength sweep short (coarse strengths first) to end in time."),
    ] = None,
    sites: Annotated[
        str | None, typer.Option(help="Site preset for the methods (paper, outputs, norms); default: the model's.")
    ] = None,
) -> None:
    """Run the embedded end-to-end demo: fit every method on the default model and compare them."""
    try:
        from lineas_tl.demo import main as demo_main
    except ImportError as err:
        raise CLIError(f"the demo is not available in this installation ({err})") from err
    if quick and full:
        raise CLIError("--quick and --full exclude each other")
    kwargs: dict[str, Any] = {"model": model, "concept": concept, "quick": quick, "full": full, "seed": seed, "sites": sites}
    if steps is not None:
        kwargs["steps"] = steps
    if out is not None:
        kwargs["out"] = out
    if method:
        kwargs["methods"] = tuple(split_list(method, "--method"))
    if time_limit is not None:
        if time_limit <= 0:
            raise CLIError("--time-limit must be a positive number of minutes")
        kwargs["time_limit"] = 60 * time_limit
    demo_main(**kwargs)


def main() -> None:  # pragma: no cover - console entry point alternative
    """Entry point: ``python -m lineas_tl.cli``."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
