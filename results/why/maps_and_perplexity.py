"""Where does LinEAS's perplexity cost come from? The maps at the BOS token against the other tokens.

    OMP_NUM_THREADS=1 python results/why/maps_and_perplexity.py --concept toxicity   # writes results/why/
    python results/why/maps_and_perplexity.py --quick                                # a smoke run, prints only

``toxicity.md`` and ``style.md`` were written before stop 28 (2026-12-05), when the library's
default sites were every block's attention and MLP outputs and LinEAS's default fit
``preset="fast"``; ``--sites outputs`` reproduces them. Without ``--sites`` the script now fits at
the new defaults (``blocks.N.ln2.hook_out``, ``paper_short``), as ``lineas-tl demo`` does.

The comparisons of that time (``results/at_outputs/<concept>/``) show LinEAS reaching the ceiling
at strength 1 but at a higher perplexity than the mean-shift baselines. Every map applies at every
position, the BOS token included (the library's choice: the fit sees it and ``fold`` stays exact). SmolLM2's BOS
activations are hundreds of times larger than the other tokens' (an attention sink), and a
per-coordinate scale ``omega`` moves a large activation by a large amount, where a shift ``b``
moves every token alike. This script fits the methods exactly as ``lineas-tl demo`` does (same
prompts, seed, sites and defaults) and measures, on the demo's 12 reference paragraphs:

- the perplexity with the maps at every position (what the comparison reports) and with the maps
  at every position but the first (the BOS), at strengths 0.5 and 1;
- how far the maps move the activations, relative to their size, averaged over sites:
  ``mean ||T(z) - z|| / mean ||z||`` over the BOS positions and over the other tokens.

It changes nothing in the library; it only explains a measured result.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from lineas_tl import HookedSteerer, models  # noqa: E402
from lineas_tl.atomic import atomic_write  # noqa: E402
from lineas_tl.concepts import get_concept, reference_text  # noqa: E402
from lineas_tl.evaluate import perplexity  # noqa: E402
from lineas_tl.methods.convergence import describe_start  # noqa: E402
from lineas_tl.runner import get_runner  # noqa: E402

METHODS = ("lineas", "linear_act", "mean_act", "caa")
STRENGTHS = (0.5, 1.0)


class _SkipFirstPosition:
    """A stand-in for a steerer whose hooks leave position 0 (the BOS) unsteered."""

    def __init__(self, steerer: HookedSteerer):
        self.steerer = steerer

    def fwd_hooks(self, strength: float) -> list[tuple[str, Any]]:
        def keep_first(inner: Any) -> Any:
            def hook(act: torch.Tensor, *, hook: Any) -> torch.Tensor:
                return torch.cat([act[:, :1], inner(act, hook=hook)[:, 1:]], dim=1)

            return hook

        return [(site, keep_first(h)) for site, h in self.steerer.fwd_hooks(strength)]


def displacement(model: Any, steerer: HookedSteerer, texts: list[str], strength: float) -> tuple[float, float]:
    """Mean over sites of ``mean ||T(z) - z|| / mean ||z||`` at position 0 (BOS) and at the other real tokens."""
    runner = get_runner(model)
    batch = runner.prepare(texts).batch(range(len(texts)), padding_side="right")
    mask = batch.kwargs["attention_mask"].bool()
    ratios: dict[str, list[float]] = {"bos": [], "tokens": []}

    def recording(inner: Any) -> Any:
        def hook(act: torch.Tensor, *, hook: Any) -> torch.Tensor:
            out = inner(act, hook=hook)
            moved, size = (out - act).norm(dim=-1), act.norm(dim=-1)
            rest = mask.clone()
            rest[:, 0] = False
            ratios["bos"].append(float(moved[:, 0].mean() / size[:, 0].mean()))
            ratios["tokens"].append(float(moved[rest].mean() / size[rest].mean()))
            return out

        return hook

    hooks = [(site, recording(h)) for site, h in steerer.fwd_hooks(strength)]
    with torch.no_grad():
        runner.forward(batch, hooks)
    return sum(ratios["bos"]) / len(ratios["bos"]), sum(ratios["tokens"]) / len(ratios["tokens"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concept", default="toxicity")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    parser.add_argument("--quick", action="store_true", help="10 LinEAS steps, 4 paragraphs; prints only")
    parser.add_argument("--sites", default=None, help="site preset, e.g. 'outputs' (default: the library's, as the demo)")
    args = parser.parse_args()
    started = time.perf_counter()
    lm = models.load("smollm2-135m")
    source, target = get_concept(args.concept).split(n_fit=32, seed=0)
    refs = reference_text(n=4 if args.quick else 12, seed=0, max_words=64)
    first = get_runner(lm).prepare(refs).batch([0]).kwargs["input"][0, 0].item()
    bos = getattr(lm.tokenizer, "bos_token_id", None)
    print(f"position 0 holds token {first} (the tokenizer's BOS is {bos})", flush=True)
    base = perplexity(lm, refs, 24)
    rows, fit_line = [], ""
    for method in METHODS:
        kw = {"steps": 10} if args.quick and method == "lineas" else {}
        steerer = HookedSteerer(lm, args.sites).fit(source, target, method, progress=False, **kw)
        fit = steerer.history_
        dev = torch.cat([(m.weight - 1).abs().flatten() for m in steerer.maps_.values()])
        omega = f"mean {float(dev.mean()):.3f}, max {float(dev.max()):.2f}"
        for s in STRENGTHS:
            ppl_all = perplexity(lm, refs, 24, steerer, s)
            ppl_rest = perplexity(lm, refs, 24, _SkipFirstPosition(steerer), s)  # type: ignore[arg-type]
            d_bos, d_tok = displacement(lm, steerer, refs, s)
            rows.append((method, s, ppl_all / base - 1, ppl_rest / base - 1, d_bos, d_tok, omega))
            print(f"{method:10s} {s:3.1f}  ppl +{100 * rows[-1][2]:.1f}% (BOS unsteered: +{100 * rows[-1][3]:.1f}%)"
                  f"  moved: BOS {d_bos:.3f}, tokens {d_tok:.3f}", flush=True)  # fmt: skip
        if method == "lineas":
            fit_line = describe_start(fit)
            print(fit_line, flush=True)
    seconds = time.perf_counter() - started
    table = [
        "| method | strength | perplexity, maps everywhere | perplexity, BOS unsteered | moved at BOS | moved at other "
        "tokens | abs(omega - 1) |",
        "|---|---|---|---|---|---|---|",
        *(f"| {m} | {s:g} | +{100 * a:.1f}% | +{100 * b:.1f}% | {db:.3f} | {dt:.3f} | {om} |"
          for m, s, a, b, db, dt, om in rows),
    ]
    text = "\n".join([
        f"# Why LinEAS costs more perplexity: {args.concept}, SmolLM2-135M",
        "",
        f"Command: `OMP_NUM_THREADS=1 python results/why/maps_and_perplexity.py --concept {args.concept}"
        + (f" --sites {args.sites}" if args.sites else "") + f"` ({seconds:.0f} s). Fits as in `lineas-tl demo` "
        f"(32 + 32 prompts, seed 0, library defaults{f', sites={args.sites!r}' if args.sites else ''}); "
        f"perplexity on the demo's {len(refs)} reference paragraphs (unsteered {base:.2f}), relative to the "
        "unsteered model. 'Moved' is `mean ||T(z) - z|| / mean ||z||` averaged over the sites; "
        "`abs(omega - 1)` is over every coordinate of every site (0 for the shifts).",
        "",
        fit_line,
        "",
        *table,
        "",
    ])  # fmt: skip
    print(text)
    if not args.quick:
        atomic_write(args.out / f"{args.concept}.md", lambda tmp: Path(tmp).write_text(text))
        print(f"wrote {args.out / (args.concept + '.md')}")


if __name__ == "__main__":
    sys.exit(main())
