"""Sentiment fit pools with more varied sentence frames: does frame variety close LinEAS's gap?

On sentiment, LinEAS fitted on seed 0's draw of the concept's 8 fit frames moves its own fit
prompts and leaves the held-out prompts (other topics and frames) where they were
(``in_sample_48``). This writes fit pools with 24 more frame pairs (32 in all) over the same 8
fit topics, so the 32 prompts drawn per side span 20-21 frames instead of 8, at the same data
budget. The held-out prompts, control prompts, reference text and judge are unchanged; no new
frame repeats a held-out frame or topic.

    python results/gate/varied_frames.py          # writes results/gate/varied_frames/pools.json
    python results/gate/run_gate_results.py --concepts sentiment --methods lineas iti --n-eval 48 \
        --strengths 0.25 0.5 0.8 1 1.5 2 3 --gate '{"shared": true, "hard": true}' \
        --fit-pools results/gate/varied_frames/pools.json --out results/gate/varied_frames --threads 1
    python results/gate/run_gate_results.py --concepts sentiment --methods caa mean_act linear_act actadd --sites outputs \
        --n-eval 48 --strengths 0.25 0.5 0.8 1 1.5 2 3 4 --fit-pools results/gate/varied_frames/pools.json \
        --out results/gate/varied_frames/baselines --threads 1             # the baselines, plain and per-site gate
    python results/gate/run_gate_results.py --concepts sentiment --plain-only --methods lineas iti --n-eval 48 \
        --strengths 0.25 0.5 0.8 1 1.5 2 --seed 1 --fit-pools results/gate/varied_frames/pools.json \
        --out results/gate/varied_frames/seed1 --threads 1                 # another draw (see fit_draws.py)
    python results/gate/varied_frames.py --open-rates --threads 1   # varied_frames/open_rates.md

``--open-rates``: the share of the 48 held-out prompts the shared hard gate opens, with its probes
fitted on each pool's draw (seed 0). The probes read the unsteered model, so they are the same for
every method at the same sites: Mean-AcT's are fitted at the default sites, ITI-c's at its heads.
"""

from __future__ import annotations

import json
from pathlib import Path

from lineas_tl.concepts import get_concept
from lineas_tl.concepts.sentiment import _NEGATIVE_FRAMES, _POSITIVE_FRAMES, fit_pools

OUT = Path(__file__).parent / "varied_frames" / "pools.json"

# (negative, positive) pairs: other syntax than the concept's "{s} was a terrible" frames
# (verdicts, questions, ratings, advice, feelings after the fact), none of the held-out frames.
_MORE_FRAMES = [
    ("I walked out of {s_l} feeling cheated, because", "I walked out of {s_l} feeling thrilled, because"),
    ("Why did anyone recommend {s_l}? It was", "Why did nobody tell me about {s_l} sooner? It was"),
    ("{s} was a letdown: the", "{s} was a delight: the"),
    ("My friends warned me that {s_l} was dull, and", "My friends told me that {s_l} was fun, and"),
    ("Two stars is generous for {s_l}, since", "Five stars is fair for {s_l}, since"),
    ("Avoid {s_l} at all costs; it", "Try {s_l} if you can; it"),
    ("{s} felt cheap and", "{s} felt special and"),
    ("What a mess {s_l} turned out to be. The", "What a treat {s_l} turned out to be. The"),
    ("I expected so much more from {s_l}, but", "I expected a lot from {s_l}, and"),
    ("{s} was frustrating, and honestly", "{s} was charming, and honestly"),
    ("After {s_l}, I was angry because", "After {s_l}, I was happy because"),
    ("I can't recommend {s_l}; it was", "I highly recommend {s_l}; it was"),
    ("{s} was painfully dull, and", "{s} was wonderfully lively, and"),
    ("There is nothing good to say about {s_l}:", "There is so much good to say about {s_l}:"),
    ("{s} was a huge mistake, and", "{s} was a fantastic choice, and"),
    ("Our experience with {s_l} was unpleasant, because", "Our experience with {s_l} was pleasant, because"),
    ("I would give {s_l} zero stars if I could, since", "I would give {s_l} ten stars if I could, since"),
    ("{s} was mediocre at best and", "{s} was excellent throughout and"),
    ("By the end, {s_l} had made me furious, and", "By the end, {s_l} had made me grin, and"),
    ("{s} was dreadful, and the", "{s} was lovely, and the"),
    ("Frankly, {s_l} was a joke, and", "Frankly, {s_l} was a gem, and"),
    ("Every minute of {s_l} was tedious, because", "Every minute of {s_l} was fun, because"),
    ("{s} was overpriced and", "{s} was worth every penny and"),
    ("It pains me to say that {s_l} was", "It makes me happy to say that {s_l} was"),
]


def pools() -> dict[str, list[str]]:
    """The concept's fit pools with the extra frames: 256 negative and 256 positive prompts."""
    negative, positive = [*_NEGATIVE_FRAMES, *(n for n, _ in _MORE_FRAMES)], [*_POSITIVE_FRAMES, *(p for _, p in _MORE_FRAMES)]
    source, target = fit_pools(negative, positive)
    held_out = set(get_concept("sentiment").eval_prompts)
    assert not held_out & (set(source) | set(target)), "a fit prompt is a held-out prompt"
    return {"source": source, "target": target}


def open_rates() -> list[str]:
    """The shared hard gate's opening share on the held-out prompts, per fit pool and site set."""
    import torch
    from run_gate_results import protocol

    from lineas_tl import HookedSteerer, models

    model = models.load("smollm2-135m")
    lines = ["| fit pool | sites | active probes | held-out prompts opened [of 48] | mean vote gate |", "|---|---|---|---|---|"]
    for name, path in (("the concept's 8 frames", None), ("32 frames (varied_frames)", OUT)):
        concept, src, tgt, control, _ = protocol("sentiment", fit_pools=path)
        held_out = concept.eval_prompts[:48]
        for sites, method in (("default (ln2)", None), ("ITI-c's heads", "iti")):
            steerer = HookedSteerer(model).fit(src, tgt, method=method or "mean_act", control=control, progress=False,
                        gate={"shared": True, "hard": True})
            steerer.gate_.options.hard = False  # the vote's probability; the hard gate opens where it is >= 1/2
            vote = torch.cat([steerer.prompt_gate(held_out[i : i + 16]) for i in range(0, 48, 16)])
            opened = (vote >= 0.5).float()
            lines.append(f"| {name} | {sites} | {len(steerer.gate_.active_sites)} | {int(opened.sum())} "
                         f"({float(opened.mean()):.0%}) | {float(vote.mean()):.2f} |")
    return lines


if __name__ == "__main__":
    import argparse

    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--open-rates", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.open_rates:
        table = "\n".join(["# The shared hard gate on the held-out sentiment prompts", "",
                            "`python results/gate/varied_frames.py --open-rates --threads 1`", "", *open_rates()])
        (OUT.parent / "open_rates.md").write_text(table + "\n")
        print(table)
    else:
        fit = pools()
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(json.dumps(fit, indent=1) + "\n")
        print(f"wrote {OUT}: {len(fit['source'])} + {len(fit['target'])} prompts")
