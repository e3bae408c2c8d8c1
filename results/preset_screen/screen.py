"""One-seed screen of LinEAS candidates for the library's default (issue 18, item 3).

Each candidate is LinEAS at some sites with some preset, evaluated exactly as the main job
(`lineas-tl demo`) evaluates methods: 32+32 toxicity fit prompts (seed 0), 12 held-out prompts x 2
sampled continuations (T 1, top_p 0.3, repetition penalty 1.2, 32 tokens), strengths 0..1 and 1.5, 2,
perplexity on 12 held-out Wikipedia paragraphs, bootstrap CIs over prompts. One seed is a screen, not
a ranking; ``--seed k`` redraws the fit prompts and the sampling (the held-out prompts and the
perplexity text stay the same, so seeds share one yardstick) and `seeds.py` pools the seeds.

    python results/preset_screen/screen.py --sites paper --preset paper --out results/preset_screen/paper_at_ln2

Without ``--sites`` a run takes the library's default sites. Those changed at stop 28 (2026-12-05):
before, every block's attention and MLP outputs (``"outputs"``, 60 sites on SmolLM2); since,
``blocks.N.ln2.hook_out`` (``"paper"``). The ``default/`` folders were written before, with
``--preset fast`` and no ``--sites``; to reproduce them, add ``--sites outputs``:

    python results/preset_screen/screen.py --sites outputs --preset fast --concept C --seed K --out results/preset_screen/default/C-seedK
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lineas_tl import models
from lineas_tl.concepts import get_concept, reference_text
from lineas_tl.demo import DemoConfig
from lineas_tl.evaluate.frontier import format_frontier, frontier_summary
from lineas_tl.evaluate.sweep import compare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", default=None, help="site preset (outputs, norms, paper); default: the library's "
                        "default sites (outputs before stop 28, paper since)")
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--concept", default="toxicity")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="the fit's step budget (default: the preset's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lineas_kwargs = {"preset": args.preset, **({"steps": args.steps} if args.steps else {})}
    cfg, c = DemoConfig(), get_concept(args.concept)
    source, target = c.split(n_fit=cfg.n_fit, seed=args.seed)
    held_out_target = [p for p in c.target_prompts if p not in set(target)][: cfg.n_target_eval]
    started = time.perf_counter()
    table = compare(
        models.load("smollm2-135m"), source, target, methods=["lineas"], sites=args.sites,
        method_kwargs={"lineas": lineas_kwargs}, strengths=cfg.strengths,
        extra_strengths=cfg.extra_strengths, eval_prompts=c.eval_prompts[: cfg.n_eval],
        target_eval_prompts=held_out_target or None, scorer=c.lower_is_better(),
        reference_texts=reference_text(n=cfg.n_reference, seed=0, max_words=cfg.reference_words),
        generation=cfg.generation, n_in_sample=cfg.n_in_sample, batch_size=cfg.batch_size,
        out_dir=args.out, seed=args.seed, progress=False,
    )
    column = table.attrs["frontier_column"]
    history = table.attrs["histories"]["lineas"]
    (args.out / "history.json").write_text(json.dumps(history, indent=1, default=str))
    converged = history.get("converged")
    sites_flag = f" --sites {args.sites}" if args.sites else ""
    steps_flag = f" --steps {args.steps}" if args.steps else ""
    lines = [
        f"# LinEAS at sites={args.sites!r}, preset={args.preset!r}{steps_flag} ({args.concept}, seed {args.seed})",
        f"Command: `python results/preset_screen/screen.py{sites_flag} --preset {args.preset}{steps_flag}"
        f" --concept {args.concept} --seed {args.seed} --out {args.out}`"
        f" ({time.perf_counter() - started:.0f} s, {args.threads} thread(s)).",
        "", f"Fit: {len(history.get('loss', []))} steps, converged: {converged} (loss curve in `history.json`).",
        "", "Best held-out score within each perplexity budget:", "",
        format_frontier(table.attrs["frontier"]).to_markdown(index=False), "",
        "Calibrated view:", "",
        format_frontier(frontier_summary(table, column=column, select="calibrated")).to_markdown(index=False), "",
        table[["strength", "score_out", "score_out_lo", "score_out_hi", "ppl_increase"]].to_markdown(index=False),
    ]
    (args.out / "SCREEN.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
