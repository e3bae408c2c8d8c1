r"""Fit every method on the same prompts, sweep the strength, and tabulate score and perplexity.

:func:`compare` is the comparison protocol of this library (see its docstring); the pieces it
uses live beside it: :mod:`~lineas_tl.evaluate.sampling` (continuations),
:mod:`~lineas_tl.evaluate.scoring` (judges and bootstrap intervals),
:mod:`~lineas_tl.evaluate.perplexity`, :mod:`~lineas_tl.evaluate.frontier` and
:mod:`~lineas_tl.evaluate.plot`.

Example:
    >>> from lineas_tl.evaluate import compare
    >>> table = compare(model, source, target, eval_prompts=held_out, out_dir="results")
    >>> table.attrs["frontier"]          # best score within +5%, +10%, +25% perplexity
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from lineas_tl.evaluate.fitting import check_method_names, fit_methods
from lineas_tl.evaluate.fluency import continuation_perplexity
from lineas_tl.evaluate.frontier import CEILING, DEFAULT_BUDGETS, frontier_summary
from lineas_tl.evaluate.grid import (
    DEFAULT_METHODS,
    DEFAULT_STRENGTHS,
    EXTRA_STRENGTHS,
    strength_grid,
    sweep_jobs,
)
from lineas_tl.evaluate.perplexity import REFERENCE_TEXTS, perplexity
from lineas_tl.evaluate.sampling import PAPER, GenerationConfig, continuations
from lineas_tl.evaluate.scoring import ConceptScore, Scorer, concept_score, toxicity_scorer
from lineas_tl.steerer import HookedSteerer
from lineas_tl.validate import check_number


def score_columns(side: str) -> list[str]:
    """The six score columns of one side (``"in"`` or ``"out"``): mean and % above threshold, with intervals."""
    return [f"{k}_{side}{suffix}" for k in ("score", "pct") for suffix in ("", "_lo", "_hi")]


COLUMNS = [
    "method", "strength", *score_columns("in"), *score_columns("out"), "rel_in", "rel_out", "gap",
    "perplexity", "ppl_increase", "scored", "fit_seconds", "eval_seconds", "sample",
    "cont_ppl", "cont_ppl_lo", "cont_ppl_hi", "cont_ppl_increase",
]  # fmt: skip
# cont_ppl*: perplexity of the held-out continuations under the unsteered model given their prompt,
# its interval, and relative to the unsteered model's own continuations (lineas_tl.evaluate.fluency).


def compare(
    model: Any,
    source: Sequence[str],
    target: Sequence[str],
    methods: Sequence[str] = DEFAULT_METHODS,
    strengths: Sequence[float] = DEFAULT_STRENGTHS,
    *,
    extra_strengths: Sequence[float] = EXTRA_STRENGTHS,
    eval_prompts: Sequence[str] | None = None,
    target_eval_prompts: Sequence[str] | None = None,
    scorer: Scorer | None = None,
    reference_texts: Sequence[str] | None = None,
    method_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    control: Sequence[str] | None = None,
    sites: Any = None,
    pooling: str = "mean",
    generation: GenerationConfig = PAPER,
    n_in_sample: int | None = None,
    max_scored_ppl_increase: float | None = None,
    budgets: Sequence[float] = DEFAULT_BUDGETS,
    batch_size: int = 16,
    generation_batch_size: int | None = None,
    threshold: float = 0.5,
    out_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    progress: bool = True,
    max_seconds: float | None = None,
) -> Any:
    r"""Fit each method once, sweep the strength, and tabulate concept score and perplexity.

    Every method is fitted on the same ``source`` → ``target`` prompts with a
    :class:`~lineas_tl.HookedSteerer` built with the same ``sites`` and ``pooling`` (ActAdd and ITI
    choose their own sites: one residual layer, and the attention heads' ``hook_z``). Then, for each
    method and strength :math:`\lambda` (:func:`strength_grid`):

    - **perplexity** of the steered model on ``reference_texts`` (``ppl_increase``: relative to
      the unsteered model);
    - **in sample**: ``generation.n_samples`` continuations of each of the first ``n_in_sample``
      ``source`` prompts (the prompts the methods were fitted on), scored by ``scorer``:
      ``score_in`` (mean score), ``pct_in`` (% above ``threshold``), each with a 95% bootstrap
      interval over prompts (``*_lo``, ``*_hi``);
    - **out of sample**: the same on ``eval_prompts``, which must be disjoint from both fit sets
      (``score_out``, ``pct_out`` and intervals);
    - ``rel_in``, ``rel_out``: scores relative to the unsteered model's on the same prompts, and
      ``gap`` = ``rel_out`` − ``rel_in`` (> 0: the method removes less on prompts it never saw).

    Strength 0 is the unsteered model, evaluated once and repeated for every method. One more row,
    ``method == "ceiling"`` (strength NaN), holds the **unsteered** model's score on continuations
    of the *target* prompts (``score_in``: the fit targets; ``score_out``: ``target_eval_prompts``,
    held-out target prompts, if given): what a method that moved the source exactly onto the target
    would score. A method scoring well below it has over-steered past the target.

    All sampling uses the same seeds for every method and strength (common random numbers, see
    :mod:`~lineas_tl.evaluate.sampling`). With ``max_scored_ppl_increase`` set, a row whose
    perplexity exceeds :math:`(1 + \text{that})\,\text{PPL}_0` is not generated or scored
    (``scored`` False, scores NaN): it saves time on collapsed models and cannot enter the frontier
    summary as long as it exceeds the largest budget.

    Args:
        model: a language model with hook points and a tokenizer (``TransformerBridge``).
        source, target: fit prompts (steer away from ``source``, towards ``target``).
        methods: names in :data:`lineas_tl.methods.METHODS`, each optionally ``"<method>+gate"``:
            the method fitted with ``control`` and a gate (:mod:`lineas_tl.evaluate.variants`).
        strengths: the sweep in [0, 1] (0 is always added).
        extra_strengths: strengths past 1, for :data:`DISTRIBUTION_MATCH` methods only.
        eval_prompts: held-out prompts for the out-of-sample columns (None: those columns are NaN).
        target_eval_prompts: held-out *target* prompts for the ceiling's out-of-sample score.
        scorer: texts -> scores in [0, 1], lower is better (default :func:`toxicity_scorer`).
        reference_texts: perplexity text (default :data:`REFERENCE_TEXTS`).
        method_kwargs: hyper-parameters per method, e.g. ``{"lineas": {"steps": 200}}``.
        control: neutral prompts for the gated variants (disjoint from ``reference_texts``).
        sites, pooling: the steerer's sites and pooling (see :class:`~lineas_tl.HookedSteerer`).
        generation: how continuations are generated (default: the paper's sampling, :data:`PAPER`).
        n_in_sample: fit prompts continued for the in-sample columns (None: all; 0: none).
        max_scored_ppl_increase: skip scoring rows beyond this perplexity increase (None: score all).
        budgets: perplexity budgets of the frontier summary.
        batch_size: rows per generation / perplexity batch.
        generation_batch_size: rows per generation batch (None: ``batch_size``). On a GPU pass a
            prompt set's rows (prompts x ``n_samples``): one batch per set. Other draws, same
            distribution (common random numbers still hold across methods and strengths).
        threshold: score above which a continuation counts as showing the concept.
        out_dir: if given, ``comparison.csv``, ``frontier.csv`` and ``tradeoff.png`` are written there.
        seed: seeds fitting (where the method takes a seed), sampling and the bootstrap.
        progress: progress bars over fitting, the sweep, and batches.
        max_seconds: a time budget for the whole call. The sweep visits strengths coarse to fine,
            in rounds over the methods (:func:`~lineas_tl.evaluate.grid.sweep_jobs`), and stops
            before a row that would likely end past the budget; the table then lacks the rows not
            reached (``attrs["protocol"]["complete"]`` is False). With ``out_dir``, the outputs
            are rewritten after every round, so an interrupted run leaves a consistent partial table.

    Returns:
        a pandas ``DataFrame`` with one row per (method, strength) evaluated plus the ceiling row, columns
        :data:`COLUMNS`. Its ``attrs`` hold ``frontier`` (:func:`frontier_summary` of the
        out-of-sample score, or the in-sample one without ``eval_prompts``), ``frontier_column``,
        ``ceiling`` (its row as a dict), ``protocol`` (the settings, for reports), ``histories``
        (each method's fit history) and, with ``out_dir``, ``csv``, ``frontier_csv`` and ``plot``.
    """
    started = time.perf_counter()
    methods = list(methods)
    hparams_of = {k: dict(v) for k, v in (method_kwargs or {}).items()}
    _check_compare_args(methods, strengths, extra_strengths, hparams_of, source, target, eval_prompts)
    source, target = list(source), list(target)
    evals = list(eval_prompts) if eval_prompts is not None else None
    if evals is None:
        warnings.warn(
            "compare() without eval_prompts reports in-sample scores only; pass held-out prompts "
            "(disjoint from source and target) to measure robustness out of sample",
            stacklevel=2,
        )
    n_in = len(source) if n_in_sample is None else max(0, min(int(n_in_sample), len(source)))
    if n_in == 0 and evals is None:
        raise ValueError("nothing to score: n_in_sample=0 and no eval_prompts")
    refs = list(reference_texts) if reference_texts is not None else list(REFERENCE_TEXTS)
    leaked = set(control or []) & (set(refs) | set(evals or []))
    if leaked:
        raise ValueError(f"{len(leaked)} control prompts are evaluation text (e.g. {sorted(leaked)[0]!r}); a gate "
                         "fitted on them would be trained on the metric. Draw control prompts elsewhere.")  # fmt: skip
    scorer = scorer or toxicity_scorer
    gen_batch = batch_size if generation_batch_size is None else check_number(
        "generation_batch_size", generation_batch_size, integer=True, minimum=1)
    fluency: dict[str, float] = {}

    def score(
        prompts: Sequence[str] | None, steerer: HookedSteerer | None, strength: float
    ) -> tuple[ConceptScore | None, str]:
        if not prompts:
            return None, ""
        texts = continuations(model, prompts, steerer, strength, config=generation, seed=seed,
                              batch_size=gen_batch, progress=progress)  # fmt: skip
        s = concept_score(texts, scorer, threshold, per_prompt=generation.n_samples, seed=seed)
        if prompts is evals:  # "are the outputs still language?": the held-out continuations under the plain model
            c = continuation_perplexity(model, prompts, texts, generation.n_samples, batch_size=batch_size, seed=seed)
            fluency.update(cont_ppl=c.value, cont_ppl_lo=c.lo, cont_ppl_hi=c.hi)
        return s, texts[0]

    def evaluate(steerer: HookedSteerer | None, strength: float, base_ppl: float | None) -> dict[str, Any]:
        start = time.perf_counter()
        ppl = perplexity(model, refs, batch_size, steerer, strength, progress=progress)
        row: dict[str, Any] = {"perplexity": ppl, "scored": True}
        cap = None if base_ppl is None or max_scored_ppl_increase is None else (1 + max_scored_ppl_increase) * base_ppl
        if cap is not None and not ppl <= cap:
            row["scored"] = False
            row["sample"] = ""
        else:
            s_in, sample_in = score(source[:n_in], steerer, strength)
            fluency.clear()
            s_out, sample_out = score(evals, steerer, strength)
            row.update(fluency)
            row.update(_score_columns(s_in, "in"), **_score_columns(s_out, "out"), sample=sample_out or sample_in)
        row["eval_seconds"] = time.perf_counter() - start
        return row

    # 1. Fit every method once; 2. the unsteered model and the ceiling; 3. the sweep.
    steerers, fit_seconds = fit_methods(
        model, source, target, methods, hparams_of, control=control, sites=sites, pooling=pooling, seed=seed,
        progress=progress,
    )
    base = evaluate(None, 0.0, None)
    start = time.perf_counter()
    c_in, _ = score(target[:n_in], None, 0.0)
    c_out, c_sample = score(list(target_eval_prompts) if target_eval_prompts else None, None, 0.0)
    ceiling = {"method": CEILING, "strength": math.nan, **_score_columns(c_in, "in"), **_score_columns(c_out, "out"),
               "perplexity": base["perplexity"], "scored": True, "fit_seconds": math.nan,
               "eval_seconds": time.perf_counter() - start, "sample": c_sample}  # fmt: skip
    grids = {m: strength_grid(m, strengths, extra_strengths) for m in methods}
    jobs = sweep_jobs(methods, grids)
    results: dict[tuple[str, float], dict[str, Any]] = {(m, 0.0): base for m in methods}
    protocol = {
        "generation": generation.describe(),
        "n_in_sample": n_in,
        "n_eval": len(evals) if evals is not None else 0,
        "n_target_eval": len(target_eval_prompts or []),
        "n_reference": len(refs),
        "n_control": len(control or []),
        "budgets": list(budgets),
        "max_scored_ppl_increase": max_scored_ppl_increase,
        "seed": seed,
        "generation_batch_size": gen_batch,
        "complete": False,
        "rows_planned": sum(len(g) for g in grids.values()),
    }
    context = {
        "ceiling": ceiling,
        "fit_seconds": fit_seconds,
        "histories": {m: s.history_ for m, s in steerers.items()},
        "column": "score_out" if evals is not None else "score_in",
        "budgets": budgets,
        "protocol": protocol,
    }
    for i, (name, strength) in enumerate(tqdm(jobs, desc="strength sweep", disable=not progress)):
        if max_seconds is not None:
            spent = [r["eval_seconds"] for k, r in results.items() if k[1] != 0.0]
            expected = sum(spent) / len(spent) if spent else 0.0
            if time.perf_counter() - started + expected > max_seconds:
                break
        results[(name, strength)] = evaluate(steerers[name], strength, base["perplexity"])
        if out_dir is not None and (i + 1) % len(methods) == 0 and i + 1 < len(jobs):
            _assemble(methods, grids, results, context, out_dir)  # a consistent partial result, on disk
    else:
        protocol["complete"] = True
    return _assemble(methods, grids, results, context, out_dir)


def _assemble(
    methods: Sequence[str],
    grids: dict[str, list[float]],
    results: dict[tuple[str, float], dict[str, Any]],
    context: dict[str, Any],
    out_dir: str | os.PathLike[str] | None,
) -> Any:
    """The table of the rows evaluated so far, with its attrs; written to ``out_dir`` if given."""
    import pandas as pd

    from lineas_tl.evaluate.plot import plot_tradeoff

    base = results[(methods[0], 0.0)]
    rows = []
    for name in methods:
        for strength in grids[name]:
            if (name, strength) not in results:
                continue
            row = dict(results[(name, strength)])
            for side in ("in", "out"):
                row[f"rel_{side}"] = _ratio(row.get(f"score_{side}", math.nan), base.get(f"score_{side}", math.nan))
            row.update(method=name, strength=strength, gap=row["rel_out"] - row["rel_in"],
                       fit_seconds=context["fit_seconds"][name])  # fmt: skip
            rows.append(row)
    rows.append(context["ceiling"])
    table = pd.DataFrame(rows).reindex(columns=COLUMNS)
    table["ppl_increase"] = table["perplexity"] / base["perplexity"] - 1
    table["cont_ppl_increase"] = table["cont_ppl"] / base.get("cont_ppl", math.nan) - 1
    table["scored"] = table["scored"].astype(bool)
    protocol = dict(context["protocol"], rows_done=len(rows) - 1)
    table.attrs.update(
        frontier=frontier_summary(table, context["budgets"], context["column"]),
        frontier_column=context["column"],
        ceiling=context["ceiling"],
        histories=context["histories"],
        protocol=protocol,
    )
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        table.attrs["csv"] = str(_write_csv(table, out / "comparison.csv"))
        table.attrs["frontier_csv"] = str(_write_csv(table.attrs["frontier"], out / "frontier.csv"))
        table.attrs["plot"] = str(plot_tradeoff(table, out / "tradeoff.png", budgets=context["budgets"]))
    return table


def _score_columns(s: ConceptScore | None, side: str) -> dict[str, float]:
    if s is None:
        return dict.fromkeys(score_columns(side), math.nan)
    values = [s.mean, *s.mean_ci, s.percent, *s.percent_ci]
    return dict(zip(score_columns(side), values, strict=True))


def _write_csv(frame: Any, path: Path) -> Path:
    """Write ``frame`` to ``path`` through a temporary file and a rename (never half-written)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        frame.to_csv(tmp, index=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _ratio(score: float, unsteered: float) -> float:
    return score / unsteered if unsteered > 0 and math.isfinite(score) else math.nan


def _check_compare_args(
    methods: list[str],
    strengths: Sequence[float],
    extra_strengths: Sequence[float],
    method_kwargs: dict[str, dict[str, Any]],
    source: Sequence[str],
    target: Sequence[str],
    eval_prompts: Sequence[str] | None,
) -> None:
    if not methods:
        raise ValueError("`methods` is empty")
    check_method_names(methods)
    if not list(strengths):
        raise ValueError("`strengths` is empty")
    if not all(math.isfinite(float(s)) and float(s) >= 0 for s in [*strengths, *extra_strengths]):
        raise ValueError("strengths must be finite and non-negative")
    extra = set(method_kwargs) - set(methods)
    if extra:
        raise ValueError(f"method_kwargs given for methods not compared: {sorted(extra)}")
    for name, prompts in (("source", source), ("target", target)):
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise TypeError(f"`{name}` must be a list of strings")
    if eval_prompts is not None:
        if isinstance(eval_prompts, str) or not all(isinstance(p, str) for p in eval_prompts):
            raise TypeError("`eval_prompts` must be a list of strings")
        if not list(eval_prompts):
            raise ValueError("`eval_prompts` is empty; pass None to skip the out-of-sample columns")
        shared = set(eval_prompts) & (set(source) | set(target))
        if shared:
            raise ValueError(
                f"{len(shared)} eval_prompts are also fit prompts (e.g. {sorted(shared)[0]!r}); the "
                "out-of-sample set must be disjoint from source and target"
            )


__all__ = [
    "COLUMNS",
    "DEFAULT_METHODS",
    "DEFAULT_STRENGTHS",
    "EXTRA_STRENGTHS",
    "compare",
    "fit_methods",
    "score_columns",
    "strength_grid",
]
