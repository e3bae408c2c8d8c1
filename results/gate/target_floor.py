"""Where LinEAS's floor lies: the unsteered model's own score on each prompt set a fit maps between.

LinEAS transports source activations onto the target prompts' distribution, so the score of the
unsteered model's continuations of the target prompts is where a fully steered LinEAS should land.
This measures it, with the gate run's sampling (`run_gate_results.protocol`, seed 0: 2 continuations
per prompt at the paper's settings) and 95% bootstrap intervals over prompts, for:

- the drawn source prompts (``Concept.split``),
- the drawn target prompts (the fit's target in every gate run),
- the 12 held-out target prompts the main job's ceiling continues,
- :func:`far_target`'s prompts: the 32 of the 64 in the target pool whose unsteered continuations
  the judge scores lowest, drawn with another sampling seed than the one measured here, and the 32
  it scores lowest on their own text. If a fit towards either would move LinEAS's floor, their own
  score must lie below the drawn target's.

Writes ``target_floor.md``.

    python results/gate/target_floor.py --threads 1
"""

from __future__ import annotations

from typing import Any

from run_gate_results import HERE, protocol, script_setup


def far_target(concept: Any, n: int, model: Any = None, seed: int = 0, *, generation: Any = None,
               batch_size: int = 24) -> list[str]:
    """The ``n`` prompts of the concept's target pool that its judge (turned lower-is-better) scores
    lowest: a target set further from the source than :meth:`Concept.split`'s draw.

    With ``model``, each prompt is judged by the mean score of the unsteered model's continuations
    under ``generation`` (the gate run's sampling), drawn with seed ``1000 + seed`` so that the
    evaluation's draws play no part; without, by the judge on the prompt's own text. Only the fit
    pool is read.
    """
    from lineas_tl.evaluate import continuations
    from lineas_tl.evaluate.bootstrap import cluster_means

    pool, judge = concept.target_prompts, concept.lower_is_better()
    if model is None:
        scores = judge(pool)
    else:
        texts = continuations(model, pool, config=generation, seed=1000 + seed, batch_size=batch_size)
        scores = list(cluster_means(judge(texts), generation.n_samples))
    order = sorted(range(len(pool)), key=lambda i: (scores[i], i))
    return [pool[i] for i in order[:n]]


def floors(model: Any, concept_name: str, seed: int = 0) -> list[tuple[str, int, float, tuple[float, float]]]:
    """Per prompt set: its name, its size, and the unsteered continuations' mean score with its interval."""
    from lineas_tl.evaluate import concept_score, continuations

    c, src, tgt, _, common = protocol(concept_name, seed=seed)
    gen, batch = common["generation"], common["batch_size"]
    held_out = [p for p in c.target_prompts if p not in set(tgt)][:12]
    rows = []
    for name, prompts in (("drawn source", src), ("drawn target", tgt), ("held-out target (the main job's ceiling)", held_out),
                          ("far target (by continuations)", far_target(c, len(tgt), model, seed, generation=gen, batch_size=batch)),
                          ("far target (by prompt text)", far_target(c, len(tgt)))):  # fmt: skip
        texts = continuations(model, prompts, config=gen, seed=seed, batch_size=batch)
        s = concept_score(texts, common["scorer"], per_prompt=gen.n_samples)
        rows.append((name, len(prompts), s.mean, s.mean_ci))
    return rows


def main() -> None:
    args, model = script_setup(["toxicity", "sentiment"])
    lines = ["# The unsteered model's score on each prompt set a fit maps between", "",
             "`python results/gate/target_floor.py --threads 1`. Seed 0, 2 sampled continuations per prompt "
             "(the paper's settings), 95% bootstrap intervals over prompts; lower is better.", ""]  # fmt: skip
    for name in args.concepts:
        lines += [f"## {name}", "", "| prompts | n | unsteered score [95% CI] |", "|---|---|---|"]
        for label, n, mean, (lo, hi) in floors(model, name):
            lines.append(f"| {label} | {n} | {mean:.3f} [{lo:.3f}, {hi:.3f}] |")
            print(name, label, f"{mean:.3f} [{lo:.3f}, {hi:.3f}]", flush=True)
        lines.append("")
    (HERE / "target_floor.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
