"""What should drive one gate shared by every site? One site's probe, or the vote of all of them.

A shared gate must be known before the first site is steered. Two ways: read the first active
site's probe on the prompt (free: the first site sees unsteered activations), or read every active
probe on the unsteered prompt and average their logits (the vote; one extra forward pass). This
measures how each separates held-out concept prompts from neutral text, with the gate's probes
fitted as in the gate run (`run_gate_results.protocol`, seed 0; the probes read the unsteered
model, so they are the same for every method: Mean-AcT's are used).

Per driver: the share of the 48 held-out concept prompts it opens (prompt gate >= 1/2), of the
neutral texts (held-out reference paragraphs cut to the prompts' length) and of the control prompts
the fit did not draw, with the mean gate, and how often it decides as the full vote does. The
votes of the first k active probes (``GateOptions.vote_sites = k``) are the drivers whose pass over
the prompt stops early: they cost that share of the full vote's pass.
Writes ``shared_driver/<concept>-<sites>.md``.

    python results/gate/shared_driver.py --concept sentiment --threads 1                  # the default sites
    python results/gate/shared_driver.py --concept sentiment --threads 1 --sites outputs

`shared_driver/sentiment-outputs.md` was made before stop 28 (2026-12-05), when the library's
default sites were every block's attention and MLP outputs, by the script as it was then (no
prefix votes, no unseen control prompts).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from run_gate_results import HERE, protocol

VOTE_PREFIXES = (1, 2, 4, 6, 8, 12, 16, 24)


def main() -> None:
    from lineas_tl import HookedSteerer, models

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concept", default="sentiment")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n-eval", type=int, default=48)
    ap.add_argument("--n-control", type=int, default=128, help="unseen control prompts scored")
    ap.add_argument("--sites", default=None, help="site preset, e.g. 'outputs' (default: the library's)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = models.load("smollm2-135m")
    concept, src, tgt, control, common = protocol(args.concept)
    prompts = concept.eval_prompts[: args.n_eval]
    n_words = max(len(p.split()) for p in prompts)
    neutral = [" ".join(t.split()[:n_words]) for t in common["reference_texts"]]
    steerer = HookedSteerer(model, args.sites).fit(src, tgt, method="mean_act", control=control, gate=True, progress=False)
    active = steerer.gate_.active_sites

    def prompt_gates(texts: list[str]) -> torch.Tensor:
        """``[texts, active sites]``: each site's prompt gate on the (barely) unsteered model."""
        return torch.stack([torch.stack([steerer.gates(t, strength=1e-6).values[s][-1] for s in active]) for t in texts])

    fit_control = set(control)
    unseen = [p for p in concept.control_pool if p not in fit_control][: args.n_control]
    held, neut, ctrl = prompt_gates(prompts), prompt_gates(neutral), prompt_gates(unseen)
    logit = lambda g: torch.logit(g.clamp(1e-6, 1 - 1e-6))  # noqa: E731
    vote = lambda g, k=None: torch.sigmoid(logit(g[:, :k]).mean(1))  # noqa: E731
    drivers = {"the vote of every active probe (mean logit)": (vote(held), vote(neut), vote(ctrl))}
    for k in VOTE_PREFIXES:
        if k < len(active):
            drivers[f"the vote of the first {k} active probes (up to {active[k - 1]})"] = (vote(held, k), vote(neut, k), vote(ctrl, k))
    drivers[f"the first active site alone ({active[0]})"] = (held[:, 0], neut[:, 0], ctrl[:, 0])
    for i in range(3, len(active), max(1, len(active) // 6)):
        drivers[f"{active[i]} alone"] = (held[:, i], neut[:, i], ctrl[:, i])
    full = torch.cat([d >= 0.5 for d in drivers["the vote of every active probe (mean logit)"]])
    lines = [f"# One gate for every site: which driver? ({args.concept})", "",
             f"Command: `python results/gate/shared_driver.py --concept {args.concept} --threads {args.threads}"
             + (f" --sites {args.sites}" if args.sites else "") + "`; "
             f"{len(prompts)} held-out prompts, {len(neutral)} neutral texts (reference paragraphs cut to the prompts' "
             f"length), {len(unseen)} control prompts the fit did not see, {len(active)} active probes "
             f"of {len(steerer.gate_.probes)} sites.", "",
             "| driver | held-out prompts opened | mean gate | neutral texts opened | mean gate "
             "| unseen control prompts opened | mean gate | same decision as the full vote |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, (h, n, c) in drivers.items():
        same = float((torch.cat([h >= 0.5, n >= 0.5, c >= 0.5]) == full).float().mean())
        lines.append(f"| {name} | {float((h >= 0.5).float().mean()):.0%} | {float(h.mean()):.2f} "
                     f"| {float((n >= 0.5).float().mean()):.0%} | {float(n.mean()):.2f} "
                     f"| {float((c >= 0.5).float().mean()):.0%} | {float(c.mean()):.2f} | {same:.0%} |")  # fmt: skip
    out = HERE / "shared_driver"
    out.mkdir(exist_ok=True)
    (out / f"{args.concept}-{args.sites or 'default'}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
