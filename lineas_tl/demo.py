"""The main job: LinEAS against the baselines on a real model, offline, in one command.

``lineas-tl demo`` loads the embedded default model (SmolLM2-135M-Instruct (Q4_1 GGUF,
dequantised), shipped inside a PyPI package),
fits every method on 32 source and 32 target prompts of a concept, sweeps the strength (11 values in
[0, 1], and 1.5 and 2 for the distribution-matching methods), and measures, per method and
strength, the concept score of sampled continuations of held-out prompts (the paper's protocol:
T = 1, top_p 0.3, repetition penalty 1.2, 32 tokens) with 95% bootstrap intervals, and the
perplexity on held-out Wikipedia text. It prints the frontier summary (each method's best score
within +5%, +10% and +25% perplexity) and writes ``comparison.csv``, ``frontier.csv``,
``tradeoff.png`` and ``RESULTS.md`` to ``--out``.

Three sizes (:class:`DemoConfig`): ``quick`` (CI: checks that everything runs), the default (the
README's main job and the runs in ``results/``: 12 held-out prompts, 2 samples each) and ``full``
(32 held-out prompts, 3 samples each, plus the in-sample columns and ceiling: for a quiet machine).
"""

from __future__ import annotations

import shlex
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lineas_tl.evaluate.grid import DEFAULT_METHODS, DEFAULT_STRENGTHS
from lineas_tl.evaluate.sampling import PAPER, GenerationConfig
from lineas_tl.evaluate.variants import base_method, is_gated

CALIBRATED_TITLE = "At the calibrated strength: the strongest before the first over each budget"


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of a demo run.

    Attributes:
        steps: LinEAS steps (None: the library's default fit).
        n_fit: fit prompts per side.
        n_eval: held-out (source-like) prompts continued for the concept score.
        n_target_eval: held-out target prompts for the ceiling.
        n_in_sample: fit prompts continued for the in-sample columns (0: skipped).
        n_reference: Wikipedia paragraphs (first ``reference_words`` words) for perplexity.
        generation: the sampling protocol and samples per prompt.
        strengths, extra_strengths: the sweep; extras for the distribution-matching methods only.
        max_scored_ppl_increase: rows beyond this perplexity increase are not generated or scored
            (+50%: the plot's range; the frontier's largest budget is +25%).
        batch_size: rows per generation batch (24: the default's 12 prompts x 2 samples in one batch).
    """

    steps: int | None = None
    n_fit: int = 32
    n_eval: int = 12
    n_target_eval: int = 12
    n_in_sample: int = 0
    n_reference: int = 12
    reference_words: int = 64
    generation: GenerationConfig = field(default_factory=lambda: PAPER.with_(n_samples=2))
    strengths: tuple[float, ...] = DEFAULT_STRENGTHS
    extra_strengths: tuple[float, ...] = (1.5, 2.0)
    max_scored_ppl_increase: float | None = 0.5
    batch_size: int = 24

    @classmethod
    def quick(cls) -> DemoConfig:
        """CI size: checks that everything runs; far too small to rank the methods."""
        return cls(
            steps=10, n_fit=16, n_eval=6, n_target_eval=4, n_in_sample=4, n_reference=6, reference_words=40,
            generation=PAPER.with_(max_new_tokens=12, n_samples=1), strengths=(0.0, 0.5, 1.0), extra_strengths=(),
        )  # fmt: skip

    @classmethod
    def full(cls) -> DemoConfig:
        """A larger run for a quiet machine (about 4x the default's cost): 32 held-out prompts with
        3 samples each, the in-sample columns and ceiling on 16 fit prompts, 32 reference paragraphs."""
        return cls(
            n_eval=32, n_target_eval=32, n_in_sample=16, n_reference=32, generation=PAPER.with_(n_samples=3),
            batch_size=48,
        )  # fmt: skip


def main(
    model: str = "smollm2-135m",
    concept: str = "toxicity",
    steps: int | None = None,
    out: str | Path = "outputs/demo",
    quick: bool = False,
    methods: tuple[str, ...] = DEFAULT_METHODS,
    seed: int = 0,
    *,
    full: bool = False,
    config: DemoConfig | None = None,
    time_limit: float | None = None,
    sites: str | None = None,
) -> Any:
    """Run the comparison, print the frontier summary, write the table, plot and RESULTS.md.

    ``config`` overrides the size chosen by ``quick`` / ``full``; ``steps`` overrides its LinEAS
    steps. ``time_limit`` (seconds) cuts the strength sweep short, coarse strengths first (see
    ``max_seconds`` of :func:`lineas_tl.evaluate.compare`). ``sites``: a site preset for every
    method but ITI-c and ActAdd, which choose their own (default: the model's default sites; before
    issue 18 ``"outputs"``). Returns the table of
    :func:`lineas_tl.evaluate.compare`.
    """
    from lineas_tl import models
    from lineas_tl.concepts import get_concept, reference_text
    from lineas_tl.evaluate import compare, format_frontier, frontier_summary

    if quick and full:
        raise ValueError("choose one of quick and full")
    cfg = config or (DemoConfig.quick() if quick else DemoConfig.full() if full else DemoConfig())
    if steps is not None:
        cfg = replace(cfg, steps=steps)
    out = Path(out)
    started = time.perf_counter()
    c = get_concept(concept)
    source, target = c.split(n_fit=cfg.n_fit, seed=seed)
    held_out_target = [p for p in c.target_prompts if p not in set(target)][: cfg.n_target_eval]
    lm = models.load(model)
    scorer = c.lower_is_better()
    lineas_kw = {"steps": cfg.steps} if cfg.steps is not None else {}
    gated = [m for m in methods if is_gated(m)]
    table = compare(
        lm,
        source,
        target,
        methods=methods,
        strengths=cfg.strengths,
        extra_strengths=cfg.extra_strengths,
        eval_prompts=c.eval_prompts[: cfg.n_eval],
        target_eval_prompts=held_out_target or None,
        scorer=scorer,
        reference_texts=reference_text(n=cfg.n_reference, seed=seed, max_words=cfg.reference_words),
        method_kwargs={m: lineas_kw for m in methods if base_method(m) == "lineas"},
        control=c.control_prompts(cfg.n_fit, seed=seed) if gated else None,
        generation=cfg.generation,
        n_in_sample=cfg.n_in_sample,
        max_scored_ppl_increase=cfg.max_scored_ppl_increase,
        batch_size=cfg.batch_size,
        out_dir=out,
        seed=seed,
        max_seconds=time_limit,
        sites=sites,
    )
    seconds = time.perf_counter() - started
    frontier = format_frontier(table.attrs["frontier"])
    calibrated = format_frontier(frontier_summary(table, column=table.attrs["frontier_column"], select="calibrated"))
    ceiling = table.attrs["ceiling"]
    print(_sweep_view(table).to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"\n{c.name}: {c.description}")
    print(f"score: {_score_name(c)}; lower is better. Ceiling (unsteered model on held-out target prompts): "
          f"{ceiling['score_out']:.3f} [{ceiling['score_out_lo']:.3f}, {ceiling['score_out_hi']:.3f}]")  # fmt: skip
    print("\nFrontier: best held-out score within each perplexity budget (score [95% CI] @ strength)")
    print(frontier.to_string(index=False))
    print(f"\n{CALIBRATED_TITLE}")
    print(calibrated.to_string(index=False))
    if not table.attrs["protocol"]["complete"]:
        print(f"(the sweep was cut short by --time-limit: {table.attrs['protocol']['rows_done']} of "
              f"{table.attrs['protocol']['rows_planned']} rows)")  # fmt: skip
    _write_results(out / "RESULTS.md", table, frontier, calibrated, c, model, seconds)
    print(f"\nwrote {out}/comparison.csv, frontier.csv, tradeoff.png and RESULTS.md ({seconds:.0f} s)")
    return table


def _score_name(concept: Any) -> str:
    return concept.score_name if concept.goal == "decrease" else f"1 - {concept.score_name}"


def _sweep_view(table: Any) -> Any:
    cols = ["method", "strength", "score_out", "score_out_lo", "score_out_hi", "pct_out", "score_in", "perplexity",
            "ppl_increase"]  # fmt: skip
    return table[[c for c in cols if c in table]]


def _fit_line(history: dict[str, Any] | None) -> list[str]:
    """How the LinEAS fit ended (a reader must see that it converged), or nothing without LinEAS."""
    from lineas_tl.methods.convergence import describe_start

    line = describe_start(history or {})
    return [line, ""] if line else []


def _command() -> str:
    if sys.argv and Path(sys.argv[0]).name in ("lineas-tl", "cli.py", "__main__.py"):
        return "lineas-tl " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return "python -m lineas_tl.demo"


def _write_results(
    path: Path, table: Any, frontier: Any, calibrated: Any, concept: Any, model: str, seconds: float
) -> None:
    p = table.attrs["protocol"]
    fits = table.groupby("method", sort=False)["fit_seconds"].first().dropna()
    limit = p["max_scored_ppl_increase"]
    cap = f" Rows beyond +{100 * limit:g}% perplexity are not generated or scored." if limit is not None else ""
    if not p["complete"]:
        cap += (f" **The sweep was cut short by its time limit: {p['rows_done']} of {p['rows_planned']} rows** "
                "(strengths are visited coarse to fine, in rounds over the methods).")  # fmt: skip
    lines = [
        f"# {concept.name}: LinEAS against the baselines on {model}",
        "",
        f"Command: `{_command()}` ({seconds:.0f} s on this machine).",
        "",
        f"Score: {_score_name(concept)} of continuations; lower is better. Continuations: {p['generation']}; "
        f"{p['n_eval']} held-out prompts (`score_out`), {p['n_in_sample']} fit prompts (`score_in`). "
        f"95% bootstrap intervals over prompts (`_lo`, `_hi`). Perplexity on {p['n_reference']} held-out "
        f"Wikipedia paragraphs.{cap}",
        "",
        "The ceiling row is the unsteered model on target prompts (`score_in`: the fit targets; "
        f"`score_out`: {p['n_target_eval']} held-out targets): what a perfect source-to-target match would score.",
        "",
        "## Frontier: best held-out score within each perplexity budget",
        "",
        frontier.to_markdown(index=False),
        "",
        f"## {CALIBRATED_TITLE}",
        "",
        "The lowest of a method's noisy scores favours methods with more strengths inside a budget. Here each "
        "method is read at the strength a calibration would pick on the sweep's grid, by perplexity alone: the "
        "strongest before the first strength over the budget.",
        "",
        calibrated.to_markdown(index=False),
        "",
        "## Every row",
        "",
        _sweep_view(table).to_markdown(index=False, floatfmt=".3f"),
        "",
        "Fit time (s): " + ", ".join(f"{m} {s:.0f}" for m, s in fits.items()),
        "",
        *_fit_line(table.attrs["histories"].get("lineas")),
    ]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(path)


if __name__ == "__main__":
    main()
