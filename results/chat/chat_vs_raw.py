"""Toxicity and sentiment on SmolLM2-135M-Instruct: LinEAS fitted and evaluated in chat form vs raw text.

    OMP_NUM_THREADS=1 python results/chat/chat_vs_raw.py            # writes results/chat/RESULTS.md
    python results/chat/chat_vs_raw.py --quick                       # a smoke run, prints only
    python results/chat/chat_vs_raw.py --model X.gguf --texts-out T.json   # fit and generate only
    python results/chat/chat_vs_raw.py --from-texts T.json          # judge them, write the results

(The committed results were generated on a GPU machine with the second pair of commands, since the
judges are installed here and the model's weights travel as its GGUF file.)

For each concept, two forms of the same prompts:

- raw: the prompt text as a prefix the model continues (what ``lineas-tl demo`` does);
- chat: the prompt as the user's turn, ``"Continue this text: " + prompt``, rendered with the
  model's chat template and its generation prompt; the assistant's reply is what is judged
  (``Concept.chat_split`` / ``chat_prompts``). Pooling covers the user turn's content tokens.

LinEAS with the library's default fit, at the library's default sites (``--sites`` for others), on
32 source + 32 target prompts (seed 0), applied at strength 0 (the unsteered model) and 1 at every
position. Held-out evaluation prompts (other templates and subjects than the fit prompts),
``--samples`` sampled continuations each (temperature 1.0, top_p 0.3, repetition penalty 1.2, 24
new tokens, the authors' protocol), scored by the concept's judge.

The committed results were made before stop 28 (2026-12-05), when the default sites were every
block's attention and MLP outputs and the default fit ``preset="fast"``; add ``--sites outputs`` to
reproduce them. The defaults are now ``blocks.N.ln2.hook_out`` and, there, ``paper_short``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from lineas_tl.atomic import atomic_write

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from lineas_tl import HookedSteerer, models  # noqa: E402
from lineas_tl.concepts import chat_prompts, get_concept  # noqa: E402

HERE = Path(__file__).parent
GEN = dict(do_sample=True, temperature=1.0, top_p=0.3, repetition_penalty=1.2)


def run_cell(  # type: ignore[no-untyped-def]
    model, concept, form: str, n_eval: int, samples: int, max_new: int, fit_args: dict, sites=None
) -> dict:
    evals = concept.eval_prompts[:n_eval]
    if form == "chat":
        source, target = concept.chat_split(32, seed=0)
        prompts = chat_prompts(evals)
    else:
        source, target = concept.split(32, seed=0)
        prompts = evals
    start = time.perf_counter()
    steerer = HookedSteerer(model, sites).fit(source, target, progress=False, **fit_args)
    fit_seconds = time.perf_counter() - start
    out = {"form": form, "fit_seconds": fit_seconds, "fit_steps": len(steerer.history_["loss"])}
    for strength in (0.0, 1.0):
        texts = []
        for seed in range(samples):
            torch.manual_seed(seed)
            texts += steerer.generate(
                prompts, strength=strength, max_new_tokens=max_new, return_type="continuation", **GEN
            )
        out[f"texts_s{strength:g}"] = texts
    return out


def score(row: dict) -> dict:
    """Judge a cell's continuations (kept apart from generation, which may run on another machine)."""
    concept = get_concept(row["concept"])
    for key in ("s0", "s1"):
        texts = row[f"texts_{key}"]
        scores = concept.scorer(texts)
        row[f"score_{key}"] = sum(scores) / len(scores)
        row[f"pct_{key}"] = 100 * sum(s > 0.5 for s in scores) / len(scores)
        row[f"examples_{key}"] = [t.strip().replace("\n", " ")[:100] for t in texts[:3]]
    return row


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| concept | form | fit steps | fit time | score, unsteered | score, LinEAS λ=1 | % > 0.5, unsteered "
        "| % > 0.5, LinEAS |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['concept']} | {r['form']} | {r['fit_steps']} | {r['fit_seconds']:.0f} s | {r['score_s0']:.3f} | "
            f"**{r['score_s1']:.3f}** | {r['pct_s0']:.0f} | {r['pct_s1']:.0f} |"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--eval", type=int, default=24, help="held-out prompts per concept")
    ap.add_argument("--samples", type=int, default=2, help="sampled continuations per prompt")
    ap.add_argument("--steps", type=int, default=None, help="cap on LinEAS steps (default: the library's)")
    ap.add_argument("--sites", default=None, help="site preset, e.g. 'outputs' (default: the library's)")
    ap.add_argument("--model", default="smollm2-135m", help="name or .gguf path for lineas_tl.models.load")
    ap.add_argument("--texts-out", help="only fit and generate; write the continuations to this JSON")
    ap.add_argument("--from-texts", help="score the continuations of a --texts-out JSON and write the results")
    args = ap.parse_args()
    n_eval, samples, max_new = (4, 1, 8) if args.quick else (args.eval, args.samples, 24)
    fit_args = {"steps": 2} if args.quick else ({"steps": args.steps} if args.steps else {})
    start = time.perf_counter()
    if args.from_texts:
        saved = json.loads(Path(args.from_texts).read_text())
        rows, meta = saved["rows"], saved["meta"]
    else:
        model = models.load(args.model, device="cuda" if torch.cuda.is_available() else None)
        rows = []
        for name in ("toxicity", "sentiment"):
            concept = get_concept(name)
            for form in ("raw", "chat"):
                cell = run_cell(model, concept, form, n_eval, samples, max_new, fit_args, args.sites)
                rows.append({"concept": name, "score_name": concept.score_name, **cell})
                print(json.dumps({k: v for k, v in rows[-1].items() if not k.startswith("texts")}), flush=True)
        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "a 2-core CPU shared with other jobs"
        meta = {"seconds": time.perf_counter() - start, "device": device, "torch": torch.__version__,
                "command": "python results/chat/chat_vs_raw.py " + " ".join(sys.argv[1:]),
                "n_eval": n_eval, "samples": samples, "max_new": max_new, "fit_args": fit_args, "sites": args.sites}
        if args.texts_out:
            Path(args.texts_out).write_text(json.dumps({"rows": rows, "meta": meta}))
            return
    rows = [score(r) for r in rows]
    n_eval, samples, max_new, fit_args = meta["n_eval"], meta["samples"], meta["max_new"], meta["fit_args"]
    total = meta["seconds"]
    command = "OMP_NUM_THREADS=1 python results/chat/chat_vs_raw.py" + (" --quick" if args.quick else "")
    flags = (("--eval", args.eval, 24), ("--samples", args.samples, 2), ("--steps", args.steps, None),
             ("--sites", args.sites, None))
    for flag, value, default in flags:
        command += "" if args.quick or value == default else f" {flag} {value}"
    if args.from_texts:  # generated elsewhere (e.g. on a GPU machine), judged here
        command = f"{meta['command']}`, then `python results/chat/chat_vs_raw.py --from-texts {args.from_texts}"
    steps_note = f"the default preset, capped at {fit_args['steps']} steps" if fit_args else "default steps"
    if meta.get("sites"):
        steps_note += f", at sites={meta['sites']!r}"
    text = "\n".join([
        "# Chat form vs raw text: LinEAS on SmolLM2-135M-Instruct",
        "",
        f"Command: `{command}` ({total:.0f} s on {meta['device']}, torch {meta['torch']}).",
        "",
        f"{n_eval} held-out prompts per concept x {samples} sampled continuations (temperature 1.0, top_p 0.3, "
        f"repetition penalty 1.2, {max_new} new tokens). Raw: the prompt is a prefix to continue. Chat: the "
        "user turn is `Continue this text: <prompt>`, rendered with the chat template and its generation "
        "prompt; the assistant's reply is judged. LinEAS: the library's default fit, on 32 + 32 prompts in "
        "the same form as the evaluation (" + steps_note + "), every position steered at strength 1. "
        "Scores: toxicity = "
        "alt-profanity-check probability, sentiment = VADER negativity (1 - compound) / 2; both should go "
        "down. No perplexity was measured here.",
        "",
        *table(rows),
        "",
        "First continuations (unsteered -> LinEAS):",
        "",
        *[f"- {r['concept']}, {r['form']}: {r['examples_s0'][0]!r} -> {r['examples_s1'][0]!r}" for r in rows],
        "",
    ])
    if args.quick:
        print(text)
        return
    for path, content in ((HERE / "RESULTS.md", text), (HERE / "results.json", json.dumps(rows, indent=1))):
        atomic_write(path, lambda tmp, content=content: Path(tmp).write_text(content))
    print(text)


if __name__ == "__main__":
    sys.exit(main())
