"""The main job: LinEAS against the baselines on a real model, offline, in one command.

``lineas-tl demo`` loads the embedded default model (SmolLM2-135M, shipped inside a PyPI package),
fits every method on 32 source and 32 target prompts of a concept, sweeps the strength, and prints
the concept score (out of sample: held-out prompts) and the perplexity on held-out Wikipedia text
per method and strength. It writes ``comparison.csv``, ``tradeoff.png`` and ``RESULTS.md`` to
``--out``.
"""

from __future__ import annotations

import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

METHODS = ("lineas", "linear_act", "mean_act", "iti", "actadd")


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of a demo run; ``quick`` is what CI runs."""

    steps: int = 100
    n_fit: int = 32
    n_eval: int = 48
    n_reference: int = 32
    max_new_tokens: int = 20
    strengths: tuple[float, ...] = (0.0, 0.5, 1.0)

    @classmethod
    def quick(cls) -> DemoConfig:
        return cls(steps=10, n_fit=16, n_eval=8, n_reference=8, max_new_tokens=8, strengths=(0.0, 1.0))


def main(
    model: str = "smollm2-135m",
    concept: str = "toxicity",
    steps: int | None = None,
    out: str | Path = "outputs/demo",
    quick: bool = False,
    methods: tuple[str, ...] = METHODS,
    seed: int = 0,
) -> Any:
    """Run the comparison and write its table, plot and a results file; returns the table."""
    from lineas_tl import models
    from lineas_tl.concepts import get_concept, reference_text
    from lineas_tl.evaluate import compare

    cfg = DemoConfig.quick() if quick else DemoConfig()
    steps = steps if steps is not None else cfg.steps
    out = Path(out)
    started = time.perf_counter()
    c = get_concept(concept)
    source, target = c.split(n_fit=cfg.n_fit, seed=seed)
    lm = models.load(model)
    # A score the methods should lower: invert a concept we want to induce (style).
    scorer = c.scorer if c.goal == "decrease" else (lambda texts: [1 - s for s in c.scorer(texts)])
    table = compare(
        lm,
        source,
        target,
        methods=methods,
        strengths=cfg.strengths,
        eval_prompts=c.eval_prompts[: cfg.n_eval],
        scorer=scorer,
        reference_texts=reference_text(n=cfg.n_reference, seed=seed, max_words=64),
        method_kwargs={"lineas": {"steps": steps}},
        max_new_tokens=cfg.max_new_tokens,
        out_dir=out,
        seed=seed,
    )
    seconds = time.perf_counter() - started
    shown = table[["method", "strength", "score_out", "pct_out", "score_in", "perplexity", "fit_seconds"]]
    print(shown.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"\n{c.name}: {c.description}")
    print(f"wrote {out / 'comparison.csv'}, {out / 'tradeoff.png'} and {out / 'RESULTS.md'} ({seconds:.0f} s)")
    _write_results(out / "RESULTS.md", shown, c, model, steps, seconds)
    return table


def _write_results(path: Path, table: Any, concept: Any, model: str, steps: int, seconds: float) -> None:
    command = "lineas-tl " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else "lineas-tl demo"
    lines = [
        f"# {concept.name}: LinEAS against the baselines on {model}",
        "",
        f"Command: `{command}` ({seconds:.0f} s on this machine; LinEAS {steps} steps).",
        "",
        f"Score: {concept.score_name} of continuations, goal: {concept.goal} "
        "(the table shows the score the methods should lower; `score_out`/`pct_out` on held-out "
        "prompts, `score_in` on the fit prompts). Perplexity on held-out Wikipedia paragraphs.",
        "",
        table.to_markdown(index=False, floatfmt=".3f"),
        "",
    ]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
