r"""Evaluate steering: concept score of generated text, perplexity, and a fair comparison of methods.

The LinEAS paper (Rodriguez et al. 2025, arXiv 2503.10679) reports two numbers per method and
strength: how much of the concept is left in the model's continuations (e.g. toxicity) and what it
costs in fluency (perplexity of the steered model on reference text). :func:`compare` fits every
method once on the same prompt sets, sites and pooling, sweeps the strength, and reports both, in
sample (continuations of the prompts the methods were fitted on) and out of sample (continuations of
held-out prompts): the paper's central claim is that LinEAS stays robust out of sample.

Example:
    >>> from lineas_tl.evaluate import compare
    >>> table = compare(model, source, target, eval_prompts=held_out, out_dir="results")
    >>> table[["method", "strength", "score_out", "perplexity"]]
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from lineas_tl.methods import METHODS
from lineas_tl.methods.actadd import DEFAULT_COEFFICIENT
from lineas_tl.methods.base import frozen
from lineas_tl.runner import TokenSequences, get_runner
from lineas_tl.steerer import HookedSteerer, Strength

Scorer = Callable[[Sequence[str]], Sequence[float]]
"""Maps texts to scores in [0, 1], higher meaning more of the concept."""

DEFAULT_METHODS: tuple[str, ...] = ("lineas", "linear_act", "mean_act", "iti", "actadd")
DEFAULT_STRENGTHS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)

REFERENCE_TEXTS: tuple[str, ...] = (
    "The river flows through the valley and reaches the sea after about two hundred kilometres.",
    "In the morning the market opens early, and farmers bring vegetables, bread and cheese.",
    "The library was built in the nineteenth century and holds more than a million books.",
    "Water boils at one hundred degrees Celsius at sea level, and at lower temperatures on mountains.",
    "The committee met on Tuesday to discuss the budget for the coming year.",
    "Many birds migrate south in autumn, flying thousands of kilometres to warmer regions.",
    "The train leaves the station at half past eight and arrives in the city before noon.",
    "She studied mathematics at the university and later worked as an engineer.",
    "The museum displays paintings, sculptures and old maps of the region.",
    "Rain is expected in the north, while the south will stay dry and mild.",
    "The bridge was opened in 1932 and carries both cars and pedestrians across the bay.",
    "Tomatoes grow best in warm weather with plenty of sunlight and regular watering.",
    "The company reported higher sales in the second quarter of the year.",
    "He walked along the beach, collecting shells and watching the waves.",
    "The town hall stands in the main square, next to an old stone church.",
    "Children in the village learn to read and write at the local school.",
    "The recipe calls for two cups of flour, one egg and a pinch of salt.",
    "Scientists measured the temperature of the lake every day for a whole year.",
    "The new road will connect the two towns and shorten the journey by an hour.",
    "The orchestra played a symphony by Beethoven, followed by a short piece by Mozart.",
    "Most of the island is covered by forest, and its highest peak rises above the clouds.",
    "The shop sells fresh fruit, newspapers and a few household goods.",
    "During the summer the park hosts concerts and an open air cinema.",
    "The old lighthouse still guides ships safely into the harbour at night.",
)
"""Neutral plain sentences (written for this library) used for perplexity when none are given.

Small and generic; for real measurements pass held-out text, e.g.
``lineas_tl.concepts.reference_text(n=64)`` (Wikipedia paragraphs disjoint from every prompt set).
"""


# --------------------------------------------------------------------------------- concept score
def toxicity_scorer(texts: Sequence[str]) -> list[float]:
    """Probability that each text is offensive, from ``alt-profanity-check`` (offline, in [0, 1]).

    A linear SVM on bag-of-words features, calibrated; fast and crude: it scores profanity, not
    the subtler toxicity that Perspective API or a RoBERTa classifier (as in the LinEAS paper)
    would catch.
    """
    from lineas_tl.concepts.toxicity import toxicity_scores

    return toxicity_scores(list(texts))


@dataclass(frozen=True)
class ConceptScore:
    """Summary of a scorer over texts: the ``mean`` score and the ``percent`` of texts above
    ``threshold`` (the paper's "toxicity %" is this percentage with a 0.5 threshold)."""

    mean: float
    percent: float
    n: int
    threshold: float = 0.5


def concept_score(texts: Sequence[str], scorer: Scorer | None = None, threshold: float = 0.5) -> ConceptScore:
    r"""Score ``texts`` with ``scorer`` (default :func:`toxicity_scorer`).

    Returns :math:`\frac{1}{n}\sum_i s_i` and :math:`100 \cdot \frac{1}{n}\,\#\{i : s_i > t\}`.

    Raises:
        ValueError: no texts, or the scorer returned the wrong number of scores or a non-finite one.
    """
    texts = list(texts)
    if not texts:
        raise ValueError("no texts to score")
    scores = [float(s) for s in (scorer or toxicity_scorer)(texts)]
    if len(scores) != len(texts):
        raise ValueError(f"the scorer returned {len(scores)} scores for {len(texts)} texts")
    if not all(math.isfinite(s) for s in scores):
        raise ValueError("the scorer returned a NaN or infinite score")
    mean = sum(scores) / len(scores)
    percent = 100.0 * sum(s > threshold for s in scores) / len(scores)
    return ConceptScore(mean, percent, len(scores), threshold)


# ------------------------------------------------------------------------------------ perplexity
@contextlib.contextmanager
def _evaluating(model: Any) -> Iterator[None]:
    with frozen(model), torch.no_grad():
        yield


def perplexity(
    model: Any,
    texts: Sequence[str] | Any,
    batch_size: int = 8,
    steerer: HookedSteerer | None = None,
    strength: Strength = 1.0,
    *,
    max_length: int | None = None,
    progress: bool = False,
) -> float:
    r"""Perplexity of ``model`` (steered by ``steerer`` at ``strength``, if given) on ``texts``.

    .. math::

        \text{PPL} = \exp\Big(\frac{1}{N}\sum_{\text{texts}}\sum_{t \ge 1} -\log p(x_{t+1} \mid x_{\le t})\Big)

    the mean next-token negative log-likelihood over all :math:`N` predicted tokens of the corpus
    (a corpus-level, token-weighted perplexity). Texts are tokenised as the model does (BOS
    included when the model prepends one), right-padded into batches and run with their attention
    mask; padded positions are excluded from the mean, so batching does not change the result.
    The loss is computed from the logits here rather than by the model's own ``return_type="loss"``
    so the padding mask is applied the same way on every model.

    Args:
        model: a language model with hook points (``TransformerBridge``).
        texts: strings (needs the model's tokenizer) or token ids.
        batch_size: texts per forward pass.
        steerer: a fitted :class:`~lineas_tl.HookedSteerer` on ``model``, or None for the model alone.
        strength: the steering strength (a float, or ``{site: float}``).
        max_length: truncate each text to this many tokens (default: the model's ``cfg.n_ctx``).
        progress: show a progress bar over batches.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    runner = get_runner(model)
    prepared = runner.prepare(texts)
    limit = max_length if max_length is not None else getattr(getattr(model, "cfg", None), "n_ctx", None)
    if isinstance(prepared, TokenSequences) and isinstance(limit, int) and limit > 0:
        prepared.sequences = [s[:limit] for s in prepared.sequences]
    hooks = steerer.hooks(strength) if steerer is not None else []
    total, count = 0.0, 0
    starts = range(0, len(prepared), batch_size)
    with _evaluating(model):
        for start in tqdm(starts, desc="perplexity", disable=not progress, leave=False):
            batch = prepared.batch(range(start, min(start + batch_size, len(prepared))), padding_side="right")
            logits = runner.forward(batch, hooks)
            tokens, mask = batch.kwargs["input"], batch.kwargs["attention_mask"]
            assert mask is not None  # a language model's batch always has one
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            nll = -logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)
            valid = (mask[:, 1:] * mask[:, :-1]).bool()
            total += float(nll[valid].double().sum())
            count += int(valid.sum())
    if count == 0:
        raise ValueError("no text has two or more tokens: there is no next token to predict")
    return math.exp(total / count)


# ------------------------------------------------------------------------------------ generation
def continuations(
    model: Any,
    prompts: Sequence[str],
    steerer: HookedSteerer | None = None,
    strength: Strength = 1.0,
    *,
    batch_size: int = 16,
    max_new_tokens: int = 20,
    seed: int = 0,
    progress: bool = False,
    **generate_kwargs: Any,
) -> list[str]:
    """The model's continuations (new text only) of ``prompts``, steered when ``steerer`` is given.

    Prompts are left-padded into batches of ``batch_size``; decoding is greedy unless
    ``do_sample=True`` is passed (then seeded with ``seed`` before each batch, without touching the
    caller's random state). Every position,
    prompt and generated, is steered (``positions="all"``), as in the paper.
    """
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts to continue")
    runner = get_runner(model)
    if getattr(runner, "tokenizer", None) is None:
        raise ValueError("generating text needs a model with a tokenizer")
    out: list[str] = []
    starts = range(0, len(prompts), batch_size)
    with _evaluating(model):
        for start in tqdm(starts, desc="generate", disable=not progress, leave=False):
            chunk = prompts[start : start + batch_size]
            kwargs = dict(max_new_tokens=max_new_tokens, return_type="continuation", **generate_kwargs)
            with torch.random.fork_rng(devices=[]):  # seeded sampling, caller's RNG state untouched
                torch.manual_seed(seed + start)
                if steerer is None:
                    texts = runner.generate(chunk, lambda tracker: [], **kwargs)  # type: ignore[attr-defined]
                else:
                    texts = steerer.generate(chunk, strength, **kwargs)
            out.extend(texts)
    return out


# ------------------------------------------------------------------------------------ comparison
def compare(
    model: Any,
    source: Sequence[str],
    target: Sequence[str],
    methods: Sequence[str] = DEFAULT_METHODS,
    strengths: Sequence[float] = DEFAULT_STRENGTHS,
    *,
    eval_prompts: Sequence[str] | None = None,
    scorer: Scorer | None = None,
    reference_texts: Sequence[str] | None = None,
    method_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    sites: Any = None,
    pooling: str = "mean",
    actadd_scale: float = DEFAULT_COEFFICIENT,
    max_new_tokens: int = 20,
    batch_size: int = 16,
    threshold: float = 0.5,
    out_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    progress: bool = True,
    generate_kwargs: Mapping[str, Any] | None = None,
) -> Any:
    r"""Fit each method once, sweep the strength, and tabulate concept score and perplexity.

    Every method is fitted on the same ``source`` → ``target`` prompts with one
    :class:`~lineas_tl.HookedSteerer` built with the same ``sites`` and ``pooling`` (ActAdd and ITI
    choose their own sites: one residual layer, and the attention heads' ``hook_z``). Then, for each
    strength :math:`\lambda`:

    - **in sample**: continuations of the ``source`` prompts the methods were fitted on, scored by
      ``scorer`` (``score_in``: mean score; ``pct_in``: % of continuations above ``threshold``);
    - **out of sample**: the same on ``eval_prompts``, which must be disjoint from both fit sets
      (``score_out``, ``pct_out``);
    - **robustness**: ``rel_in`` and ``rel_out`` are the scores relative to the unsteered model's on
      the same prompts (:math:`s_\lambda / s_0`, needs 0 among the strengths), and
      ``gap`` = ``rel_out`` − ``rel_in``. Relative scores cancel the difference in difficulty
      between the two prompt sets; for a concept to remove, ``gap > 0`` means the method removes
      less of it on prompts it was not fitted on;
    - **perplexity** of the steered model on ``reference_texts``.

    Strength 0 is the unsteered model: it is evaluated once and its row repeated for every method,
    so every curve starts from the same point. For ActAdd the strength is mapped to its unbounded
    coefficient, :math:`c = \lambda \cdot` ``actadd_scale`` (the ``scale`` column holds what was
    passed to ``steer``); every other method uses :math:`\lambda` as is (for ITI, :math:`\lambda = 1`
    is its :math:`\alpha`).

    Args:
        model: a language model with hook points and a tokenizer (``TransformerBridge``).
        source, target: fit prompts (steer away from ``source``, towards ``target``).
        methods: names in :data:`lineas_tl.methods.METHODS`.
        strengths: the sweep (0 = unsteered).
        eval_prompts: held-out prompts for the out-of-sample columns (None: those columns are NaN).
        scorer: texts -> scores in [0, 1] (default :func:`toxicity_scorer`).
        reference_texts: perplexity text (default :data:`REFERENCE_TEXTS`).
        method_kwargs: hyper-parameters per method, e.g. ``{"lineas": {"steps": 200}}``. A method
            that takes a ``seed`` gets ``seed`` unless given here.
        sites, pooling: the steerer's sites and pooling (see :class:`~lineas_tl.HookedSteerer`).
        actadd_scale: ActAdd coefficient at strength 1 (default 5, as in Turner et al. 2023).
        max_new_tokens: length of each continuation.
        batch_size: prompts per generation / perplexity batch.
        threshold: score above which a continuation counts as showing the concept.
        out_dir: if given, ``comparison.csv`` and ``tradeoff.png`` are written there.
        seed: seeds fitting (where the method takes a seed) and sampling (if ``do_sample``).
        progress: progress bars over fitting, the sweep, and batches.
        generate_kwargs: passed to the model's ``generate`` (e.g. ``{"do_sample": True}``).

    Returns:
        a pandas ``DataFrame`` with one row per (method, strength): ``method``, ``strength``,
        ``scale``, ``score_in``, ``pct_in``, ``score_out``, ``pct_out``, ``rel_in``, ``rel_out``,
        ``gap``, ``perplexity``,
        ``fit_seconds``, ``sample`` (the first continuation: out of sample if any). Its ``attrs``
        hold ``histories`` (each method's fit history) and, with ``out_dir``, ``csv`` and ``plot``.
    """
    import pandas as pd

    methods, strengths = list(methods), [float(s) for s in strengths]
    hparams_of: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (method_kwargs or {}).items()}
    _check_compare_args(methods, strengths, hparams_of, source, target, eval_prompts)
    source, target = list(source), list(target)
    evals = list(eval_prompts) if eval_prompts is not None else None
    if evals is None:
        warnings.warn(
            "compare() without eval_prompts reports in-sample scores only; pass held-out prompts "
            "(disjoint from source and target) to measure robustness out of sample",
            stacklevel=2,
        )
    refs = list(reference_texts) if reference_texts is not None else list(REFERENCE_TEXTS)
    gen_kw = dict(generate_kwargs or {})
    scorer = scorer or toxicity_scorer

    def evaluate(steerer: HookedSteerer | None, scale: float) -> dict[str, Any]:
        common: dict[str, Any] = {
            "batch_size": batch_size, "max_new_tokens": max_new_tokens, "seed": seed, "progress": progress,
        }  # fmt: skip
        texts_in = continuations(model, source, steerer, scale, **common, **gen_kw)
        s_in = concept_score(texts_in, scorer, threshold)
        row: dict[str, Any] = {"score_in": s_in.mean, "pct_in": s_in.percent}
        if evals is not None:
            texts_out = continuations(model, evals, steerer, scale, **common, **gen_kw)
            s_out = concept_score(texts_out, scorer, threshold)
            row.update(score_out=s_out.mean, pct_out=s_out.percent, sample=texts_out[0])
        else:
            row.update(score_out=math.nan, pct_out=math.nan, sample=texts_in[0])
        row["perplexity"] = perplexity(model, refs, batch_size, steerer, scale, progress=progress)
        return row

    # 1. Fit every method once.
    steerers: dict[str, HookedSteerer] = {}
    fit_seconds: dict[str, float] = {}
    for name in tqdm(methods, desc="fit methods", disable=not progress):
        hparams = dict(hparams_of.get(name, {}))
        if "seed" in inspect.signature(METHODS[name]).parameters:
            hparams.setdefault("seed", seed)
        start = time.perf_counter()
        steerers[name] = HookedSteerer(model, sites, pooling=pooling).fit(  # type: ignore[arg-type]
            source, target, method=name, progress=progress, **hparams
        )
        fit_seconds[name] = time.perf_counter() - start

    # 2. Sweep: the unsteered model once, then every (method, strength > 0).
    rows: list[dict[str, Any]] = []
    base = evaluate(None, 0.0) if 0.0 in strengths else None
    jobs = [(m, s) for m in methods for s in strengths if s != 0.0]
    results = {}
    for name, strength in tqdm(jobs, desc="strength sweep", disable=not progress):
        scale = strength * (actadd_scale if name == "actadd" else 1.0)
        results[(name, strength)] = (scale, evaluate(steerers[name], scale))
    for name in methods:
        for strength in strengths:
            if strength == 0.0:
                scale, row = 0.0, base
            else:
                scale, row = results[(name, strength)]
            assert row is not None
            rel_in = _ratio(row["score_in"], base["score_in"]) if base else math.nan
            rel_out = _ratio(row["score_out"], base["score_out"]) if base else math.nan
            rows.append(
                {"method": name, "strength": strength, "scale": scale, **row, "rel_in": rel_in,
                 "rel_out": rel_out, "gap": rel_out - rel_in, "fit_seconds": fit_seconds[name]}
            )  # fmt: skip
    columns = [
        "method", "strength", "scale", "score_in", "pct_in", "score_out", "pct_out", "rel_in",
        "rel_out", "gap", "perplexity", "fit_seconds", "sample",
    ]  # fmt: skip
    table = pd.DataFrame(rows, columns=columns)
    table.attrs["histories"] = {m: s.history_ for m, s in steerers.items()}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        table.to_csv(out / "comparison.csv", index=False)
        table.attrs["csv"] = str(out / "comparison.csv")
        table.attrs["plot"] = str(plot_tradeoff(table, out / "tradeoff.png"))
    return table


def _ratio(score: float, unsteered: float) -> float:
    return score / unsteered if unsteered > 0 and math.isfinite(score) else math.nan


def _check_compare_args(
    methods: list[str],
    strengths: list[float],
    method_kwargs: dict[str, dict[str, Any]],
    source: Sequence[str],
    target: Sequence[str],
    eval_prompts: Sequence[str] | None,
) -> None:
    if not methods:
        raise ValueError("`methods` is empty")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {sorted(METHODS)}")
    if len(set(methods)) != len(methods):
        raise ValueError("`methods` lists a method twice")
    if not strengths:
        raise ValueError("`strengths` is empty")
    if not all(math.isfinite(s) for s in strengths):
        raise ValueError("strengths must be finite numbers")
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


# ------------------------------------------------------------------------------------------ plot
def plot_tradeoff(table: Any, path: str | os.PathLike[str], title: str | None = None) -> Path:
    """Plot concept score against perplexity, one curve per method, and save it as a PNG.

    One panel for the in-sample score and, when the table has out-of-sample scores, one beside it.
    Points are labelled with their strength; the unsteered model (strength 0) is a black star. The
    perplexity axis turns logarithmic when it spans more than a factor of 20. Uses
    matplotlib's object API with the Agg canvas, so it never touches pyplot's global state.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [("score_in", "in sample (fit prompts)")]
    if "score_out" in table and table["score_out"].notna().any():
        panels.append(("score_out", "out of sample (held-out prompts)"))
    fig = Figure(figsize=(6.0 * len(panels), 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (column, label) in zip(axes, panels, strict=True):
        for name, group in table.groupby("method", sort=False):
            group = group.sort_values("strength")
            line = ax.plot(group["perplexity"], group[column], marker="o", label=name)[0]
            for _, r in group[group["strength"] != 0].iterrows():
                ax.annotate(
                    f"{r['strength']:g}", (r["perplexity"], r[column]), textcoords="offset points",
                    xytext=(3, 3), fontsize=7, color=line.get_color(),
                )  # fmt: skip
        base = table[table["strength"] == 0]
        if len(base):
            ax.plot(base["perplexity"].iloc[:1], base[column].iloc[:1], "k*", ms=12, label="unsteered", zorder=5)
        ppl = table["perplexity"][table["perplexity"] > 0]
        if len(ppl) and ppl.max() / ppl.min() > 20:
            ax.set_xscale("log")  # one collapsed method must not flatten every other curve
        ax.set_xlabel("perplexity on reference text (lower is better)")
        ax.set_ylabel("concept score (mean)")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


__all__ = [
    "DEFAULT_METHODS",
    "DEFAULT_STRENGTHS",
    "REFERENCE_TEXTS",
    "ConceptScore",
    "Scorer",
    "compare",
    "concept_score",
    "continuations",
    "perplexity",
    "plot_tradeoff",
    "toxicity_scorer",
]
