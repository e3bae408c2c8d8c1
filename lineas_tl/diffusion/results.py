r"""Diffusion results on the digits model: remove a colour, induce it, and measure what else moved.

One command makes everything in ``results/diffusion/``::

    python -m lineas_tl.diffusion.results --out results/diffusion          # full (minutes)
    python -m lineas_tl.diffusion.results --out /tmp/diffusion --quick     # about a minute

The trained digits pipeline (:mod:`lineas_tl.diffusion.digits`, cached after its first training)
is steered to remove one ink colour (red by default): the source prompts ask for a red digit, the
target prompts for the same digit in another colour (the fit templates only). Every method is
fitted on the same prompts and sites (every normalisation layer of the UNet) and evaluated on the
held-out templates with the same seeds:

``share_removed``
    share of ink pixels of the concept colour in images of held-out prompts that ask for it,
    steered at strength 1 (lower is better; the ``unsteered`` row is the starting point).
``digit_acc_removed``
    how often the digit classifier reads the requested digit in those images (the content kept).
``ssim_other``
    the paper's image-similarity measure for images *without* the concept: each steered image of a
    prompt asking for another colour against the unsteered image of the same prompt and seed (1 =
    untouched). No learned image model ships offline, so the similarity is SSIM (Wang et al. 2004,
    3x3 uniform windows, per channel) on the pixels. The
    ``seed-to-seed`` row gives the scale of an unrelated change: two seeds of the same prompt.
``colour_acc_other``
    how often those images keep their own colour as the dominant one.
``share_induced``
    share of the concept colour in images of the other-colour prompts under the inverse map
    (:math:`T^{-1}`, inducing the concept; higher is better).

Each number is a mean over held-out prompts with a 95% percentile bootstrap interval, prompts as
the resampling unit (a prompt's seeds are averaged first; :mod:`lineas_tl.evaluate.bootstrap`).

ITI-c is left out: it probes and shifts attention heads' outputs (``blocks.L.attn.hook_z`` of a
transformer language model), and the UNet adapter exposes normalisation layers, not per-head
outputs. ActAdd is left out too: it adds its vector at token positions.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from PIL import Image, ImageDraw

from lineas_tl.atomic import atomic_write
from lineas_tl.diffusion.digits import (
    COLOURS,
    DIGIT_WORDS,
    EVAL_TEMPLATES,
    FIT_TEMPLATES,
    DigitsConfig,
    DigitsJudge,
    caption,
    load_digits_pipeline,
    to_array,
)

METHODS: tuple[str, ...] = ("lineas", "linear_act", "mean_act")
METRICS: tuple[str, ...] = ("share_removed", "digit_acc_removed", "ssim_other", "colour_acc_other", "share_induced")


@dataclass(frozen=True)
class ResultsConfig:
    """What the results run fits and measures.

    Attributes:
        digits: the digits model's training recipe (its cache entry).
        colour: the concept colour to remove / induce.
        seeds: image seeds; every method uses the same ones.
        templates: held-out caption templates evaluated (fit templates are never evaluated).
        methods: fitting methods compared.
        gated: methods also fitted with a gate (``control=`` digits in the other colours, fit templates
            only; ``gate=True``), as rows ``<method>+gate``. Their inverse map is not measured: the gate
            opens on prompts that ask for the colour, which the prompts it would induce it in do not.
        lineas_steps, lineas_lr: LinEAS's step cap and learning rate (None: the library's default
            fit, which stops once converged); the other methods are closed form.
        num_inference_steps: DDIM steps per image.
    """

    digits: DigitsConfig = field(default_factory=DigitsConfig)
    colour: str = "red"
    seeds: tuple[int, ...] = (0, 1, 2, 3)
    templates: tuple[int, ...] = EVAL_TEMPLATES
    methods: tuple[str, ...] = METHODS
    gated: tuple[str, ...] = METHODS
    lineas_steps: int | None = None
    lineas_lr: float | None = None
    num_inference_steps: int = 10


#: the quick run: the digits test recipe (shared cache with tests/test_digits.py), one seed, one template
QUICK = ResultsConfig(
    digits=DigitsConfig(steps=500, batch_size=32), seeds=(0,), templates=EVAL_TEMPLATES[:1], lineas_steps=60,
    gated=("mean_act",),
)


def fit_prompts(colour: str = "red", shift: int = 0) -> tuple[list[str], list[str]]:
    """Source (digits in ``colour``) and target (the same digits in the other colours) fit prompts;
    ``shift`` rotates which other colour each digit gets (1: the gate's control prompts)."""
    others = [c for c in COLOURS if c != colour]
    source = [caption(colour, d, t) for t in FIT_TEMPLATES for d in range(10)]
    target = [caption(others[(d + t + shift) % len(others)], d, t) for t in FIT_TEMPLATES for d in range(10)]
    return source, target


def ssim(a: Float[np.ndarray, "n h w c"], b: Float[np.ndarray, "n h w c"], window: int = 3) -> Float[np.ndarray, " n"]:
    """Mean structural similarity of each image pair (values in [0, 1]; 3x3 uniform windows)."""
    c1, c2 = 0.01**2, 0.03**2
    x, y = torch.from_numpy(a).double().permute(0, 3, 1, 2), torch.from_numpy(b).double().permute(0, 3, 1, 2)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(t, window, stride=1)

    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3)).numpy()


def _interval(values: Sequence[float], n_seeds: int) -> tuple[float, float, float]:
    from lineas_tl.evaluate.bootstrap import bootstrap_ci, cluster_means

    per_prompt = cluster_means(values, per_prompt=n_seeds)
    lo, hi = bootstrap_ci(per_prompt)
    return float(per_prompt.mean()), lo, hi


def _prompt_major(per_seed: list[np.ndarray]) -> np.ndarray:
    """``[seed][prompt]`` values -> prompt-major, a prompt's seeds consecutive."""
    return np.stack(per_seed, axis=1).reshape(-1)


@dataclass
class _Held:
    """Held-out prompts: ``concept`` ones ask for the colour, ``other`` ones for another colour."""

    concept: list[tuple[str, int]]  # (prompt, requested digit)
    other: list[tuple[str, int]]  # (prompt, index of its own colour)

    @classmethod
    def of(cls, config: ResultsConfig) -> _Held:
        names = list(COLOURS)
        concept = [(caption(config.colour, d, t), d) for t in config.templates for d in range(10)]
        other = [(caption(o, d, t), names.index(o)) for t in config.templates for d in range(10) for o in names
                 if o != config.colour]
        return cls(concept, other)


def run(
    config: ResultsConfig = ResultsConfig(),
    out: str | os.PathLike[str] = "results/diffusion",
    *,
    progress: bool = True,
    command: str | None = None,
) -> pd.DataFrame:
    """Fit every method, generate with the same seeds, write grids, table and RESULTS.md to ``out``."""
    from lineas_tl import HookedSteerer
    from lineas_tl.diffusers import HookedPipeline

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    pipe = load_digits_pipeline(config.digits, progress=progress)
    hooked = HookedPipeline(pipe, num_inference_steps=config.num_inference_steps, guidance_scale=1.0)
    held = _Held.of(config)
    source, target = fit_prompts(config.colour)
    fit_seconds: dict[str, float] = {}
    try:
        steerers: dict[str, Any] = {}
        for method in config.methods:
            t0 = time.perf_counter()
            kw = _lineas_kwargs(config) if method == "lineas" else {}
            steerers[method] = HookedSteerer(hooked).fit(source, target, method=method, progress=progress, **kw)
            fit_seconds[method] = time.perf_counter() - t0
        control = fit_prompts(config.colour, shift=1)[1]
        for method in config.gated:
            t0 = time.perf_counter()
            kw = _lineas_kwargs(config) if method == "lineas" else {}
            steerers[f"{method}+gate"] = HookedSteerer(hooked).fit(
                source, target, method=method, control=control, gate=True, progress=progress, **kw
            )
            fit_seconds[f"{method}+gate"] = time.perf_counter() - t0
        per, seed_ssim, images = _measure(steerers, held, config)
    finally:
        hooked.remove_hook_points()
    table = _summarise(per, seed_ssim, fit_seconds, len(config.seeds))
    rows = list(per)
    removal = [np.concatenate([images[(m, "removal")][:6], images[(m, "other")][:4]]) for m in rows]
    heads = [p for p, _ in held.concept[:6]] + [p for p, _ in held.other[:4]]
    atomic_write(out / "removal_grid.png", lambda p: _grid(removal, rows, heads).save(p, format="PNG"))
    rows_inv = [m for m in rows if images[(m, "induction")] is not None]
    induction = [images[(m, "induction")][:10] for m in rows_inv]
    heads = [p for p, _ in held.other[:10]]
    atomic_write(out / "induction_grid.png", lambda p: _grid(induction, rows_inv, heads).save(p, format="PNG"))
    atomic_write(out / "results.csv", lambda p: table.to_csv(p, index=False, float_format="%.4f"))
    text = _report(table, config, command, time.perf_counter() - start, pipe.training_record, held)
    atomic_write(out / "RESULTS.md", lambda p: Path(p).write_text(text, encoding="utf-8"))
    return table


def _measure(
    steerers: dict[str, Any], held: _Held, config: ResultsConfig
) -> tuple[dict[str, dict[str, list[np.ndarray]]], list[np.ndarray], dict[tuple[str, str], np.ndarray]]:
    """Per method and metric, one array of per-prompt values per seed; seed-to-seed SSIMs; seed-0 images."""
    judge = DigitsJudge()
    c = list(COLOURS).index(config.colour)
    digits_c = np.array([d for _, d in held.concept])
    own = np.array([k for _, k in held.other])
    anyone = next(iter(steerers.values()))  # at strength 0 any steerer is the unsteered model

    def gen(steerer: Any, items: list[tuple[str, int]], seed: int, **kw: Any) -> np.ndarray:
        return to_array(steerer.generate([p for p, _ in items], seed=seed, output_type="np", **kw))

    per: dict[str, dict[str, list[np.ndarray]]] = {m: {k: [] for k in METRICS} for m in ["unsteered", *steerers]}
    seed_ssim: list[np.ndarray] = []
    images: dict[tuple[str, str], np.ndarray] = {}
    for si, seed in enumerate(config.seeds):
        plain_c, plain_o = gen(anyone, held.concept, seed, strength=0.0), gen(anyone, held.other, seed, strength=0.0)
        runs = {"unsteered": (plain_c, plain_o, plain_o)}
        for method, steerer in steerers.items():
            inverse = None if method.endswith("+gate") else gen(steerer, held.other, seed, inverse=True)
            runs[method] = (gen(steerer, held.concept, seed), gen(steerer, held.other, seed), inverse)
        if si == 0:
            for method, arrays in runs.items():
                images.update({(method, key): arr for key, arr in zip(("removal", "other", "induction"), arrays)})
        else:
            seed_ssim.append(ssim(plain_o, images[("unsteered", "other")]))
        for method, (removed, other, induced) in runs.items():
            per[method]["share_removed"].append(judge.colour_shares(removed)[:, c])
            per[method]["digit_acc_removed"].append((judge.digits(removed) == digits_c).astype(float))
            per[method]["ssim_other"].append(ssim(other, plain_o))
            per[method]["colour_acc_other"].append((judge.colour_shares(other).argmax(1) == own).astype(float))
            if induced is not None:
                per[method]["share_induced"].append(judge.colour_shares(induced)[:, c])
    return per, seed_ssim, images


def _summarise(
    per: dict[str, dict[str, list[np.ndarray]]],
    seed_ssim: list[np.ndarray],
    fit_seconds: dict[str, float],
    n_seeds: int,
) -> pd.DataFrame:
    """One row per method: each metric's mean over prompts and its 95% bootstrap interval."""
    rows = []
    for method, metrics in per.items():
        row: dict[str, Any] = {"method": method, "fit_seconds": round(fit_seconds.get(method, 0.0), 1)}
        for key, values in filter(lambda kv: kv[1], metrics.items()):
            row[key], row[f"{key}_lo"], row[f"{key}_hi"] = _interval(_prompt_major(values), n_seeds)
        rows.append(row)
    if seed_ssim:  # seeds 1.. against seed 0 of the same prompt, unsteered
        row = {"method": "seed-to-seed", "fit_seconds": 0.0}
        row["ssim_other"], row["ssim_other_lo"], row["ssim_other_hi"] = _interval(_prompt_major(seed_ssim), n_seeds - 1)
        rows.append(row)
    return pd.DataFrame(rows)


def _lineas_kwargs(config: ResultsConfig) -> dict[str, Any]:
    kw = {"steps": config.lineas_steps, "lr": config.lineas_lr}
    return {k: v for k, v in kw.items() if v is not None}


def _grid(rows: list[np.ndarray], row_names: list[str], col_names: list[str], cell: int = 56) -> Image.Image:
    """Rows of images ``[n, h, w, 3]`` in [0, 1] as one PNG, row labels left, column labels on top."""
    label_w, head_h = 80, 14
    n_cols = max(len(r) for r in rows)
    canvas = Image.new("RGB", (label_w + cell * n_cols, head_h + cell * len(rows)), "white")
    draw = ImageDraw.Draw(canvas)
    for j, name in enumerate(col_names[:n_cols]):
        words = [w for w in name.split() if w in COLOURS or w in DIGIT_WORDS]  # e.g. "red seven"
        draw.text((label_w + j * cell + 2, 2), " ".join(words)[:9], fill="black")
    for i, (name, row) in enumerate(zip(row_names, rows)):
        draw.text((4, head_h + i * cell + cell // 2 - 5), name, fill="black")
        for j, im in enumerate(row):
            tile = Image.fromarray((np.clip(im, 0, 1) * 255).astype(np.uint8)).resize((cell, cell), Image.NEAREST)
            canvas.paste(tile, (label_w + j * cell, head_h + i * cell))
    return canvas




def _report(
    table: pd.DataFrame,
    config: ResultsConfig,
    command: str | None,
    seconds: float,
    training: dict[str, Any],
    held: _Held,
) -> str:
    def cell(row: pd.Series, key: str) -> str:
        if pd.isna(row.get(key)):
            return ""
        return f"{row[key]:.3f} [{row[f'{key}_lo']:.3f}, {row[f'{key}_hi']:.3f}]"

    header = "| method | " + " | ".join(METRICS) + " | fit s |"
    lines = [header, "|" + "---|" * (len(METRICS) + 2)]
    for _, row in table.iterrows():
        lines.append(f"| {row['method']} | " + " | ".join(cell(row, k) for k in METRICS) + f" | {row['fit_seconds']} |")
    cfg = dataclasses.asdict(config)
    return "\n".join([
        f"# Diffusion: removing and inducing \"{config.colour}\" on the digits model",
        "",
        f"Command: `{command or 'python -m lineas_tl.diffusion.results'}` ({seconds:.0f} s on this machine, "
        f"torch threads {torch.get_num_threads()}).",
        "",
        f"Digits model: {cfg['digits']} (trained in {training.get('train_seconds')} s, "
        f"final loss {training.get('final_loss', float('nan')):.4f}; cached).",
        f"Fit: {len(fit_prompts(config.colour)[0])} + {len(fit_prompts(config.colour)[1])} prompts (fit templates "
        f"{list(FIT_TEMPLATES)}), every normalisation layer of the UNet; LinEAS with "
        f"{_lineas_kwargs(config) or 'the default fit'}; Linear-AcT (support range q_0_100) and Mean-AcT "
        "(incremental) in closed form.",
        f"Evaluation: held-out templates {list(config.templates)}, {len(held.concept)} prompts asking for "
        f"{config.colour}, {len(held.other)} asking for another colour, seeds {list(config.seeds)} (the same for every "
        f"method), {config.num_inference_steps} DDIM steps, strength 1.",
        *([f"Gated rows (`<method>+gate`): the same fit with `control=` {len(fit_prompts(config.colour, 1)[1])} "
           "prompts of digits in the other colours (fit templates, another colour per digit than the targets) "
           "and `gate=True` (LinEAS: maps and gate trained together); one gate per image and site, read at the "
           "first denoising step. Their inverse map is not measured (the gate opens on prompts asking for the "
           "colour, which prompts to induce it in do not)."] if config.gated else []),
        "",
        "Mean over prompts [95% bootstrap interval]. `share_removed`: lower is better; `share_induced`, "
        "`ssim_other`, `digit_acc_removed`, `colour_acc_other`: higher is better. `ssim_other` is the "
        "similarity of steered and unsteered images (same prompt, same seed) of prompts without the concept, "
        "the paper's image-similarity measure, computed here as SSIM on the pixels (no learned image model "
        "ships offline). `seed-to-seed`: SSIM of two seeds of the same prompt, the scale of an unrelated change.",
        "",
        *lines,
        "",
        "![removal](removal_grid.png)",
        "",
        f"`removal_grid.png`: rows = methods, columns = the first held-out prompts (seed {config.seeds[0]}); "
        f"the first 6 ask for {config.colour} (it should disappear), the last 4 for another colour (they "
        "should not change).",
        "",
        "![induction](induction_grid.png)",
        "",
        f"`induction_grid.png`: the inverse map on prompts asking for another colour ({config.colour} should "
        "appear); the `unsteered` row shows them unsteered.",
        "",
        "ITI-c is not in this comparison: it shifts attention heads' outputs (`attn.hook_z` of a transformer "
        "language model), which the UNet adapter does not expose. ActAdd adds its vector at token positions.",
        "",
    ])


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m lineas_tl.diffusion.results [--out DIR] [--quick]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="results/diffusion", help="output directory")
    parser.add_argument("--quick", action="store_true", help="the one-minute version (the test's)")
    parser.add_argument("--colour", default="red", choices=sorted(COLOURS))
    args = parser.parse_args(argv)
    config = dataclasses.replace(QUICK if args.quick else ResultsConfig(), colour=args.colour)
    torch.set_num_threads(1)  # tiny models: one thread is fastest on a busy CPU
    command = "python -m lineas_tl.diffusion.results --out " + str(args.out) + (" --quick" if args.quick else "")
    command += f" --colour {args.colour}" if args.colour != "red" else ""
    table = run(config, args.out, progress=not args.quick, command=command)
    print(table.round(3).to_string(index=False))
    print(f"wrote {args.out}/RESULTS.md")


if __name__ == "__main__":
    main()
