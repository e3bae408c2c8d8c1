"""Benchmark the diffusers adapter: one LinEAS fitting step, and steered vs unsteered generation.

Two pipelines, both built at random offline: the tiny test pipeline (16x16 images) and a
pipeline with Stable Diffusion 1.5's UNet (860M parameters), CLIP ViT-L/14 text encoder and VAE
configs. On a CPU the SD-1.5-sized one runs one denoising step at a small resolution
(``--sd15-size``, default 128 px, i.e. 16x16 latents).

Measured, median of ``--repeats`` runs after one warm-up (the three generation variants run
round-robin, so that a change in machine load hits them alike):

* ``prepare``: recording the UNet inputs of the fitting prompts (text encoder + step-0 inputs);
* ``fit step``: one LinEAS step: UNet forward with a map at every normalisation layer,
  pooling, the W2 loss, backward, Adam;
* ``generate``: the plain pipeline, ``steerer.generate(strength=1)`` and ``strength=0``.

With ``--digits``, also the digits model trained by :mod:`lineas_tl.diffusion.digits` (trained once,
then cached): its training time, a 100-step LinEAS fit removing "red", and the ground-truth measures.

Results are appended, with the command that produced them, to ``benchmarks/RESULTS_diffusers.md``.

Usage:
    python benchmarks/bench_diffusers.py                       # tiny + SD-1.5-sized
    python benchmarks/bench_diffusers.py --skip-sd15 --threads 1   # tiny only, one thread
    python benchmarks/bench_diffusers.py --skip-tiny --threads 2
    python benchmarks/bench_diffusers.py --skip-tiny --skip-sd15 --digits --threads 1
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from lineas_tl import HookedSteerer, global_loss
from lineas_tl.collect import pooled_forward
from lineas_tl.diffusers import HookedPipeline
from lineas_tl.diffusion.tiny import sd15_unet_config, tiny_pipeline, word_tokenizer

RESULTS = Path(__file__).with_name("RESULTS_diffusers.md")
OBJECTS = ["cat", "dog", "car", "house", "tree", "flower", "bird", "horse", "boat", "apple", "city", "garden"]


def timed(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs, after one warm-up run."""
    return timed_together([fn], repeats)[0]


def timed_together(fns: list[Callable[[], Any]], repeats: int) -> list[float]:
    """Median wall time of each of ``fns``, run round-robin (so load drift hits them alike)."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def sd15_pipeline(seed: int = 0) -> Any:
    """A StableDiffusionPipeline with SD-1.5's UNet, text encoder and VAE configs, random weights."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = word_tokenizer(max_length=77)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
            num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    ).eval()
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=512,
    ).eval()
    unet = UNet2DConditionModel(**sd15_unet_config()).eval()
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="trailing", steps_offset=1
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def bench(name: str, pipe: Any, *, batch: int, size: int | None, steps: int, repeats: int) -> dict[str, Any]:
    """Time prepare, one fit step and generation on ``pipe``; returns a row of results."""
    n_params = sum(p.numel() for p in pipe.unet.parameters())
    hooked = HookedPipeline(pipe, num_inference_steps=steps, guidance_scale=0.0, height=size, width=size)
    sites = hooked.default_steering_sites()
    source = [f"a photo of a red {o}" for o in OBJECTS] * 3
    target = [p.replace(" red ", " blue ") for p in source]
    runner = hooked.lineas_runner()
    start = time.perf_counter()
    prepared = runner.prepare(source[:batch])
    prepare_s = time.perf_counter() - start

    steerer = HookedSteerer(hooked).fit(source[:batch], target[:batch], steps=1, progress=False)
    maps = {s: m.requires_grad_(True) for s, m in steerer.maps_.items()}
    params = [p for m in maps.values() for p in m.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.9))
    tgt = {s: v.detach() + 0.1 for s, v in pooled_forward(runner, prepared.batch(range(batch)), sites, maps=None)[0].items()}

    def fit_step() -> None:
        pooled, _ = pooled_forward(runner, prepared.batch(range(batch)), sites, maps=maps, detach=False)
        loss, _ = global_loss(pooled, tgt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    fit_s = timed(fit_step, repeats)
    call = hooked.call_kwargs()
    prompt = "a photo of a red cat"
    plain_s, steered_s, zero_s = timed_together(
        [
            lambda: pipe(prompt, generator=torch.Generator().manual_seed(0), output_type="np", **call),
            lambda: steerer.generate(prompt, strength=1.0, seed=0, output_type="np"),
            lambda: steerer.generate(prompt, strength=0.0, seed=0, output_type="np"),
        ],
        repeats,
    )
    hooked.remove_hook_points()
    res = size or pipe.unet.config.sample_size * pipe.vae_scale_factor
    return {
        "pipeline": name,
        "unet params": f"{n_params / 1e6:.1f}M",
        "sites": len(sites),
        "image": f"{res}x{res}, {steps} step(s)",
        "fit batch": batch,
        "prepare (s)": prepare_s,
        "fit step (s)": fit_s,
        "generate plain (s)": plain_s,
        "generate steered (s)": steered_s,
        "generate strength 0 (s)": zero_s,
        "steered / plain": steered_s / plain_s,
    }


def bench_digits(quick: bool) -> dict[str, Any]:
    """The trained digits model: training time, fit time and the ground-truth steering measures."""
    from lineas_tl.diffusion import digits

    config = digits.QUICK_CONFIG if quick else digits.DigitsConfig()
    pipe = digits.load_digits_pipeline(config, progress=False)
    hooked = HookedPipeline(pipe, num_inference_steps=10, guidance_scale=1.0)
    others = [c for c in digits.COLOURS if c != "red"]
    source = [digits.caption("red", d, t) for t in digits.FIT_TEMPLATES for d in range(10)]
    target = [digits.caption(others[(d + t) % 2], d, t) for t in digits.FIT_TEMPLATES for d in range(10)]
    start = time.perf_counter()
    steerer = HookedSteerer(hooked).fit(source, target, steps=100, lr=1e-2, progress=False)
    fit_s = time.perf_counter() - start
    res = digits.evaluate_colour_steering(steerer, digits.DigitsJudge(), "red", seeds=(0, 1))
    hooked.remove_hook_points()
    record = pipe.training_record
    return {
        "recipe": f"{config.steps} steps x {config.batch_size}",
        "train (s)": float(record["train_seconds"]),
        "train threads": record.get("torch_threads", "?"),
        "weights": "loaded from the cache (train time from its record)" if record.get("from_cache") else "trained now",
        "LinEAS fit, 100 steps (s)": fit_s,
        **res,
    }


def write_results(
    rows: list[dict[str, Any]], command: str, build_s: dict[str, float], digits_row: dict[str, Any] | None
) -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    lines = [
        f"## {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        "",
        f"Command: `{command}`",
        "",
        (
            f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} with "
            f"{torch.get_num_threads()} thread(s), load average at the end {load[0]:.1f} (other jobs share "
            "the cores), no GPU, float32."
        ),
        "",
    ]
    if rows:
        lines += ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    for row in rows:
        cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()]
        lines.append("| " + " | ".join(cells) + " |")
    if build_s:
        lines += ["", "Build time at random: " + ", ".join(f"{k} {v:.1f} s" for k, v in build_s.items())]
    if digits_row:
        lines += [
            "",
            (
                "Digits model (trained here; removing red, ground truth on 20 held-out red prompts and 40 "
                "held-out green/blue prompts, 2 seeds; see `lineas_tl.diffusion.digits.evaluate_colour_steering`):"
            ),
            "",
            "| measure | value |",
            "|---|---|",
        ]
        lines += [f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in digits_row.items()]
    lines += ["", ""]
    text = "\n".join(lines)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    if not RESULTS.exists():
        RESULTS.write_text(
            "# Diffusers adapter benchmarks\n\nAppended by `benchmarks/bench_diffusers.py`; times are medians "
            "in seconds, after one warm-up run.\n\n"
        )
    with RESULTS.open("a") as f:
        f.write(text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-sd15", action="store_true", help="only the tiny pipeline")
    parser.add_argument("--skip-tiny", action="store_true", help="only the SD-1.5-sized pipeline")
    parser.add_argument("--sd15-size", type=int, default=128, help="image side for the SD-1.5-sized pipeline")
    parser.add_argument("--sd15-batch", type=int, default=4, help="prompts per fit step (SD-1.5-sized)")
    parser.add_argument("--tiny-batch", type=int, default=32, help="prompts per fit step (tiny)")
    parser.add_argument("--tiny-steps", type=int, default=4, help="denoising steps (tiny)")
    parser.add_argument("--digits", action="store_true", help="also the trained digits model (trains once)")
    parser.add_argument("--digits-quick", action="store_true", help="the digits model's quick recipe")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--no-write", action="store_true", help="print only, do not append to the results file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    rows, build_s = [], {}
    with torch.random.fork_rng():
        if not args.skip_tiny:
            start = time.perf_counter()
            pipe = tiny_pipeline(seed=0)
            build_s["tiny"] = time.perf_counter() - start
            rows.append(
                bench("tiny SD", pipe, batch=args.tiny_batch, size=None, steps=args.tiny_steps, repeats=args.repeats)
            )
            print(rows[-1], flush=True)
        if not args.skip_sd15:
            start = time.perf_counter()
            pipe = sd15_pipeline()
            build_s["SD-1.5-sized"] = time.perf_counter() - start
            rows.append(
                bench("SD-1.5-sized", pipe, batch=args.sd15_batch, size=args.sd15_size, steps=1, repeats=args.repeats)
            )
            print(rows[-1], flush=True)
    digits_row = bench_digits(args.digits_quick) if args.digits or args.digits_quick else None
    if digits_row:
        print(digits_row, flush=True)
    if not rows and not digits_row:
        parser.error("nothing to run: drop --skip-tiny or --skip-sd15, or add --digits")
    text = write_results(rows, command, build_s, digits_row) if not args.no_write else ""
    print(text)


if __name__ == "__main__":
    main()
