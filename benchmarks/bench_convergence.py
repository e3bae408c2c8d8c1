"""Time to quality of a LinEAS fit: the library's default against the paper's recipe.

For each concept, on the embedded SmolLM2-135M with 32 source + 32 target fit prompts, at the
library's default sites (``--sites``):

- fits LinEAS with the paper's recipe (1000 Adam steps, lr 1e-3, cosine, raw parametrisation) and with
  the library default, recording the loss and the wall time of every step;
- the time each fit needs to reach 95% of the paper recipe's final loss reduction
  (``L0 - 0.95 (L0 - L_paper)``, with ``L0`` the loss of the identity maps), and its final loss;
- the concept score of sampled continuations of the concept's held-out prompts (the authors'
  sampling: temperature 1.0, top_p 0.3, repetition penalty 1.2; ``--samples`` per prompt, seeded),
  at strength 1, with a 95% bootstrap interval over prompts, plus the unsteered model's score.

Usage (results go to ``benchmarks/RESULTS_convergence.md`` and ``--out``)::

    OMP_NUM_THREADS=1 python benchmarks/bench_convergence.py --concept toxicity --concept sentiment

The table in ``RESULTS_convergence.md`` was measured before stop 28 (2026-12-05), when the default
was ``preset="fast"`` at every block's attention and MLP outputs (60 sites); ``--sites outputs``
reproduces it. Without ``--sites`` the script now measures the default since then, ``paper_short``
at ``blocks.N.ln2.hook_out``, and the paper's recipe at those sites too. Fits are cached per recipe
under ``--out``: give each set of sites its own ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
RECIPES = {"paper": {"preset": "authors_yaml"}, "default": {}}  # the Adam recipe this benchmark measured
TABLE_START, TABLE_END = "<!-- table -->", "<!-- /table -->"


def fit_all(model, concept: str, out: Path, recipes: list[str], sites: str | None = None) -> dict[str, dict]:
    from lineas_tl import HookedSteerer
    from lineas_tl.concepts import get_concept

    split = get_concept(concept).split(32, seed=0)
    histories = {}
    for name in recipes:
        path = out / concept / name
        if (path / "history.json").exists():
            histories[name] = json.loads((path / "history.json").read_text())
            continue
        torch.manual_seed(0)
        start = time.perf_counter()
        steerer = HookedSteerer(model, sites).fit(split.source, split.target, progress=False, **RECIPES[name])
        h = steerer.history_
        print(f"{concept} {name}: {h['steps']} steps, {time.perf_counter() - start:.0f} s, "
              f"loss {h['initial_loss']:.4g} -> {h['final_loss']:.4g}, converged {h['converged']}", flush=True)
        steerer.save(path)
        keep = {k: h[k] for k in ("loss", "time", "initial_loss", "final_loss", "steps", "converged",
                                  "stop_reason", "max_abs_omega_minus_1", "max_abs_b", "seconds", "config")}
        (path / "history.json").write_text(json.dumps(keep))
        histories[name] = keep
    return histories


def identity_loss(model, concept: str, sites: str | None = None) -> float:
    """The loss of the identity maps (what the paper recipe starts from)."""
    from lineas_tl import HookedSteerer
    from lineas_tl.concepts import get_concept

    split = get_concept(concept).split(32, seed=0)
    s = HookedSteerer(model, sites).fit(split.source, split.target, preset="authors_yaml", steps=1, lr=1e-30, progress=False, warn=False)
    return s.history_["loss"][0]


def time_to(history: dict, threshold: float) -> float | None:
    for loss, t in zip(history["loss"], history["time"]):
        if loss <= threshold:
            return t
    return None


def bootstrap_ci(values: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (n, len(values)))].mean(1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def concept_scores(model, concept: str, out: Path, recipes: list[str], samples: int, n_eval: int) -> dict:
    from lineas_tl import HookedSteerer
    from lineas_tl.concepts import get_concept

    c = get_concept(concept)
    prompts = c.eval_prompts[:n_eval]
    kw = dict(max_new_tokens=32, do_sample=True, temperature=1.0, top_p=0.3, repetition_penalty=1.2,
              return_type="continuation")
    results = {}
    for name in ["unsteered", *recipes]:
        steerer = None if name == "unsteered" else HookedSteerer.load(out / concept / name, model)
        per_prompt = np.zeros((len(prompts), samples))
        for k in range(samples):
            torch.manual_seed(1000 + k)
            if steerer is None:
                texts = _generate_plain(model, prompts, kw)
            else:
                texts = steerer.generate(prompts, strength=1.0, **kw)
            per_prompt[:, k] = c.score(texts)
        values = per_prompt.mean(1)
        results[name] = (float(values.mean()), *bootstrap_ci(values))
        print(f"{concept} {name}: {c.score_name} {results[name][0]:.3f} "
              f"[{results[name][1]:.3f}, {results[name][2]:.3f}]", flush=True)
    return results


def perplexities(model, concept: str, out: Path, recipes: list[str]) -> dict[str, float]:
    """Perplexity on 32 held-out Wikipedia paragraphs, unsteered and with each recipe at strength 1."""
    from lineas_tl import HookedSteerer
    from lineas_tl.concepts import reference_text
    from lineas_tl.evaluate import perplexity

    texts = reference_text(n=32, seed=0, max_words=64)
    result = {"unsteered": perplexity(model, texts)}
    for name in recipes:
        result[name] = perplexity(model, texts, steerer=HookedSteerer.load(out / concept / name, model), strength=1.0)
    return result


def _generate_plain(model, prompts, kw):
    from lineas_tl.runner import get_runner

    return get_runner(model).generate(prompts, lambda tracker: [], **kw)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--concept", action="append", default=None)
    p.add_argument("--recipe", action="append", default=None, choices=list(RECIPES))
    p.add_argument("--out", default="outputs/bench_convergence")
    p.add_argument("--samples", type=int, default=3)
    p.add_argument("--n-eval", type=int, default=48)
    p.add_argument("--no-score", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--sites", default=None, help="site preset, e.g. 'outputs' (default: the library's)")
    p.add_argument("--report", default=None, help="write the markdown table of every concept in --out here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lineas_tl import models

    random.seed(0)
    model = models.load("smollm2-135m")
    out = Path(args.out)
    recipes = args.recipe or list(RECIPES)
    rows = []
    for concept in args.concept or ["toxicity", "sentiment"]:
        hist = fit_all(model, concept, out, recipes, args.sites)
        l0 = identity_loss(model, concept, args.sites)
        ref = hist["paper"]["final_loss"] if "paper" in hist else None
        scores = {} if args.no_score else concept_scores(model, concept, out, recipes, args.samples, args.n_eval)
        ppl = {} if args.no_score else perplexities(model, concept, out, recipes)
        for name in recipes:
            h = hist[name]
            reach = time_to(h, l0 - 0.95 * (l0 - ref)) if ref is not None else None
            rows.append({"concept": concept, "recipe": name, "identity_loss": l0, **{k: h[k] for k in (
                "steps", "seconds", "final_loss", "converged", "max_abs_omega_minus_1", "max_abs_b")},
                "time_to_95": reach, "score": scores.get(name), "unsteered": scores.get("unsteered"),
                "ppl": ppl.get(name), "ppl_unsteered": ppl.get("unsteered")})
    for concept in {r["concept"] for r in rows}:
        (out / concept / "rows.json").write_text(json.dumps([r for r in rows if r["concept"] == concept], indent=1))
    for r in rows:
        print(json.dumps(r))
    print("command:", "python " + " ".join(sys.argv))
    if args.report:
        write_report(out, Path(args.report))


def write_report(out: Path, path: Path) -> None:
    """The time-to-quality table from every ``<out>/<concept>/rows.json`` and the saved histories."""
    lines = [
        "| concept | recipe | steps | wall time | final loss (identity) | steps / time to 95% of the paper's reduction "
        "| steps / time to within 10% of the paper's final loss | converged | max abs(omega-1), max abs(b) | score at strength 1 [95% CI] | perplexity |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rows_file in sorted(out.glob("*/rows.json")):
        rows = json.loads(rows_file.read_text())
        for r in rows:
            h = json.loads((out / r["concept"] / r["recipe"] / "history.json").read_text())
            paper = json.loads((out / r["concept"] / "paper" / "history.json").read_text())["final_loss"]
            l0 = r["identity_loss"]
            at95 = _first(h, l0 - 0.95 * (l0 - paper))
            at10 = _first(h, 1.1 * paper)
            score = r.get("score")
            cell = "" if not score else f"{score[0]:.3f} [{score[1]:.3f}, {score[2]:.3f}]"
            if r["recipe"] == rows[0]["recipe"] and r.get("unsteered"):
                u = r["unsteered"]
                cell_u = f"{u[0]:.3f} [{u[1]:.3f}, {u[2]:.3f}]"
                lines.append(f"| {r['concept']} | unsteered | | | {l0:.4g} | | | | | {cell_u} | {_num(r.get('ppl_unsteered'))} |")
            lines.append(
                f"| {r['concept']} | {r['recipe']} | {r['steps']} | {r['seconds']:.0f} s | {r['final_loss']:.4g} | "
                f"{_fmt(at95)} | {_fmt(at10)} | {r['converged']} | "
                f"{r['max_abs_omega_minus_1']:.3g}, {r['max_abs_b']:.3g} | {cell} | {_num(r.get('ppl'))} |"
            )
    table = "\n".join(lines) + "\n"
    text = path.read_text() if path.exists() else ""
    if TABLE_START in text and TABLE_END in text:  # keep the prose around the table
        head, rest = text.split(TABLE_START, 1)
        table = head + TABLE_START + "\n" + table + TABLE_END + rest.split(TABLE_END, 1)[1]
    path.write_text(table)
    print(f"wrote {path}")


def _first(history: dict, threshold: float) -> tuple[int, float] | None:
    for step, (loss, t) in enumerate(zip(history["loss"], history["time"])):
        if loss <= threshold:
            return step + 1, t
    return None


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}"


def _fmt(hit: tuple[int, float] | None) -> str:
    return "not reached" if hit is None else f"{hit[0]} / {hit[1]:.0f} s"


if __name__ == "__main__":
    main()
