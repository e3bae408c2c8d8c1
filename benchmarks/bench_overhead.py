"""What steering costs, measured as ratios on the machine this runs on, in one run.

    python benchmarks/bench_overhead.py                 # full run, writes benchmarks/RESULTS.md
    python benchmarks/bench_overhead.py --quick         # a smaller model and batch, for a smoke test

The model is GPT-2-small-shaped (Hugging Face ``GPT2Config()`` defaults: 12 layers, d_model 768,
12 heads, d_mlp 3072, vocab 50,257), randomly initialised offline and read through
``TransformerBridge`` exactly as the library reads any Hugging Face model. Inputs are token ids, so no
tokenizer is needed. Steering sites are the library defaults (:func:`lineas_tl.sites.default_sites`):
since stop 28 (2026-12-05) every block's ``ln2.hook_out`` (12 maps); before, and in ``RESULTS.md`` of
2026-11-26, every block's ``hook_attn_out`` and ``hook_mlp_out`` (24 maps).

1. **Training step.** One LinEAS step, exactly the body of :func:`lineas_tl.methods.lineas.fit_lineas`
   (forward of the source minibatch with every map active and every site pooled, the sorted-W2
   loss against the target statistics, backward, Adam, cosine schedule, sparse-group-lasso prox)
   against the *bare* forward+backward of the same frozen model on the same batch. The fair baseline
   runs the same layers: LinEAS never needs the logits (``return_type=None``, the unembedding is
   skipped) and its gradients reach back to the first map, at block 0's first site. So the
   baseline makes that site's activation a leaf that requires grad, runs the same forward
   (no unembedding), takes a scalar of the last block's residual output, and backpropagates to the
   leaf: same layers forward, same layers backward, frozen weights, no maps, no pooling, no loss,
   no optimiser. The ratio is everything LinEAS adds. A second baseline, the full model to logits
   and back, is printed for reference.
2. **Generation.** Greedy generation with the KV cache, unsteered vs steered by hooks vs steered by
   folded weights (:meth:`HookedSteerer.fold`), all through the same ``generate`` call path.
3. **Loss.** The library's sort-based per-coordinate W2² (:func:`lineas_tl.losses.global_loss`,
   ``backend="sort"``) against the same function on POT's ``ot.wasserstein_1d`` (``backend="pot"``),
   forward+backward on the same sites x [batch, 768] tensors.
4. **Memory.** Peak resident memory added by :func:`lineas_tl.collect_activations` (every site, mean
   pooling, batches of 16) on 128 and on 1024 prompts, each in a fresh process (RSS sampled every
   millisecond), minus the size of the pooled result it returns: what remains must not grow with
   the number of prompts.

Timings interleave the variants in rotating order after warm-up, so background load on a shared
machine affects all variants alike; each variant's time is its fastest repeat (as ``timeit``
recommends: the least disturbed run), and the ratio of medians is printed next to it. On a loaded
machine pass ``--threads 1``: several processes each spinning two OpenMP threads on two cores make
timings swing tenfold.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from overhead_memory import bench_memory  # noqa: E402  (beside this script)
from overhead_report import machine, report  # noqa: E402

HERE = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------- the model
def build_model(quick: bool, seed: int = 0) -> Any:
    """A GPT-2-small-shaped model at random, read through ``TransformerBridge`` (offline)."""
    from transformer_lens import TransformerBridge
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    cfg = GPT2Config() if not quick else GPT2Config(n_layer=4, n_embd=256, n_head=4, vocab_size=5000)
    torch.manual_seed(seed)
    hf = GPT2LMHeadModel(cfg).eval()
    with tempfile.TemporaryDirectory() as d:
        cfg.save_pretrained(d)
        bridge = TransformerBridge.boot_transformers(d, hf_model=hf, device="cpu")
    return bridge.eval()


def token_batch(n: int, pos: int, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, pos), generator=g).tolist()


# ----------------------------------------------------------------------------- timing
def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Run each function ``warmup`` times, then ``repeats`` rounds of all of them in turn."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate: no order bias
            gc.collect()
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return times


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def spread(xs: list[float]) -> str:
    return f"{min(xs):.3g}–{max(xs):.3g}"


# ----------------------------------------------------------------------------- 1. training step
def bench_train_step(model: Any, batch: int, pos: int, repeats: int, warmup: int) -> dict[str, Any]:
    from lineas_tl.collect import pooled_forward
    from lineas_tl.losses import global_loss
    from lineas_tl.maps import AffineMap
    from lineas_tl.methods.base import frozen
    from lineas_tl.methods.lineas import _prox
    from lineas_tl.runner import get_runner
    from lineas_tl.sites import default_sites

    runner = get_runner(model)
    sites = default_sites(model)
    vocab = model.cfg.d_vocab
    source = runner.prepare(token_batch(batch, pos, vocab, seed=1)).batch(range(batch))
    target_b = runner.prepare(token_batch(batch, pos, vocab, seed=2)).batch(range(batch))
    d = model.cfg.d_model
    first, last = sites[0], f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"

    with frozen(model):
        with torch.no_grad():
            target, _ = pooled_forward(runner, target_b, sites, "mean")
        maps = {s: AffineMap((d,), 2) for s in sites}
        params = [p for m in maps.values() for p in m.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.9))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=1000)
        gamma = 0.1

        def lineas_step() -> None:  # the body of fit_lineas' loop
            pooled, _ = pooled_forward(runner, source, sites, "mean", maps, detach=False)
            loss, _ = global_loss(pooled, target, "auto")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tau = opt.param_groups[0]["lr"] * gamma
            sched.step()
            _prox(maps, tau, tau)

        store: dict[str, torch.Tensor] = {}

        def make_leaf(act: torch.Tensor, hook: Any) -> torch.Tensor:
            leaf = act.detach().requires_grad_(True)
            store["leaf"] = leaf
            return leaf

        def keep(act: torch.Tensor, hook: Any) -> torch.Tensor:
            store["out"] = act
            return act

        def bare_step() -> None:  # same layers forward and backward, frozen weights, nothing else
            runner.forward(source, [(first, make_leaf), (last, keep)], sites=[last])
            store["out"].float().pow(2).mean().backward()
            store.clear()

        tokens = source.kwargs["input"]
        mask = source.kwargs["attention_mask"]

        def full_step() -> None:  # the whole model to logits and back to the first site
            with model.hooks(fwd_hooks=[(first, make_leaf)]):
                logits = model(tokens, attention_mask=mask)
            logits.float().logsumexp(-1).mean().backward()
            store.clear()

        times = interleaved({"bare": bare_step, "lineas": lineas_step, "full": full_step}, repeats, warmup)
    return {
        "sites": len(sites),
        "site_names": sites,
        "batch": f"{batch} x {pos} tokens",
        "bare_s": min(times["bare"]),
        "lineas_s": min(times["lineas"]),
        "full_s": min(times["full"]),
        "ratio": min(times["lineas"]) / min(times["bare"]),
        "ratio_median": med(times["lineas"]) / med(times["bare"]),
        "ratio_full": min(times["lineas"]) / min(times["full"]),
        "spread": {k: spread(v) for k, v in times.items()},
    }


# ----------------------------------------------------------------------------- 2. generation
def bench_generation(model: Any, batch: int, prompt_len: int, new: int, repeats: int, warmup: int) -> dict[str, Any]:
    from lineas_tl.maps import AffineMap
    from lineas_tl.steerer import HookedSteerer

    steerer = HookedSteerer(model)
    g = torch.Generator().manual_seed(0)
    d = model.cfg.d_model
    maps = {}
    for s in steerer.sites:  # a steerer far from the identity (its values do not change the cost)
        m = AffineMap((d,), 2)
        with torch.no_grad():
            m.weight.copy_(1 + 0.05 * torch.randn(d, generator=g))
            m.bias.copy_(0.05 * torch.randn(d, generator=g))
        m.requires_grad_(False)
        maps[s] = m
    steerer.maps_, steerer.method_ = maps, "manual"
    prompts = token_batch(batch, prompt_len, model.cfg.d_vocab, seed=3)
    kw = dict(max_new_tokens=new, return_type="tokens", stop_at_eos=False, use_past_kv_cache=True)

    def unsteered() -> Any:
        return steerer.runner.generate(prompts, lambda tracker: [], **kw)

    def hooked() -> Any:
        return steerer.generate(prompts, strength=1.0, **kw)

    def folded() -> Any:
        return steerer.runner.generate(prompts, lambda tracker: [], **kw)

    handle_box: list[Any] = []

    def fold_on() -> None:
        handle_box.append(steerer.fold(1.0))

    def fold_off() -> None:
        handle_box.pop().undo()

    with torch.no_grad():
        hooked_tokens = hooked()
        fold_on()
        folded_tokens = folded()
        fold_off()
        same = bool(torch.equal(hooked_tokens, folded_tokens))

        def folded_timed() -> Any:
            # fold/unfold happen outside the timed call below: serving folds once
            return folded()

        for _ in range(warmup):
            unsteered(), hooked()
            fold_on(), folded_timed(), fold_off()
        times: dict[str, list[float]] = {"unsteered": [], "hooked": [], "folded": []}
        variants = [("unsteered", unsteered), ("hooked", hooked), ("folded", folded_timed)]
        for r in range(repeats):
            for name, fn in variants[r % 3 :] + variants[: r % 3]:  # rotate: no order bias
                if name == "folded":
                    fold_on()
                gc.collect()
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
                if name == "folded":
                    fold_off()
    base = min(times["unsteered"])
    return {
        "shape": f"batch {batch}, prompt {prompt_len}, {new} new tokens, greedy, KV cache",
        "unsteered_s": base,
        "hooked_s": min(times["hooked"]),
        "folded_s": min(times["folded"]),
        "ratio_hooked": min(times["hooked"]) / base,
        "ratio_folded": min(times["folded"]) / base,
        "ratio_hooked_median": med(times["hooked"]) / med(times["unsteered"]),
        "ratio_folded_median": med(times["folded"]) / med(times["unsteered"]),
        "folded_equals_hooked": same,
        "spread": {k: spread(v) for k, v in times.items()},
    }


# ----------------------------------------------------------------------------- 3. the loss
def bench_loss(n_sites: int, n: int, d: int, repeats: int) -> dict[str, Any]:
    from lineas_tl.losses import global_loss

    g = torch.Generator().manual_seed(0)
    u = {f"s{i}": torch.randn(n, d, generator=g) for i in range(n_sites)}
    v = {f"s{i}": torch.randn(n, d, generator=g) * 1.5 + 0.3 for i in range(n_sites)}

    def run(backend: str) -> Callable[[], float]:
        def fn() -> float:
            src = {k: x.clone().requires_grad_(True) for k, x in u.items()}
            loss, _ = global_loss(src, v, backend)  # type: ignore[arg-type]
            loss.backward()
            return float(loss.detach())

        return fn

    vals = {b: run(b)() for b in ("sort", "pot")}
    times = interleaved({"sort": run("sort"), "pot": run("pot")}, repeats, warmup=3)
    return {
        "shape": f"{n_sites} sites x [{n}, {d}], forward+backward",
        "sort_ms": 1e3 * min(times["sort"]),
        "pot_ms": 1e3 * min(times["pot"]),
        "ratio": min(times["sort"]) / min(times["pot"]),
        "ratio_median": med(times["sort"]) / med(times["pot"]),
        "max_rel_diff": abs(vals["sort"] - vals["pot"]) / abs(vals["pot"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model and batch: a smoke test, not a result")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per measurement")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md", help="where to write the results table")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument(
        "--report-from", type=Path, default=None, help="rebuild RESULTS.md from a results.json, measuring nothing"
    )
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch threads (default: torch's choice). On a shared, loaded machine 1 thread avoids "
        "OpenMP oversubscription, which otherwise makes timings swing tenfold",
    )  # fmt: skip
    args = parser.parse_args()
    if args.report_from is not None:
        args.out.write_text(report(json.loads(args.report_from.read_text())))
        print(f"wrote {args.out}")
        return
    if args.threads:
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    mach_start = machine()
    repeats = args.repeats or 7
    model = build_model(args.quick)
    command = "python benchmarks/bench_overhead.py" + (" --quick" if args.quick else "")
    command += f" --threads {args.threads}" if args.threads else ""
    res: dict[str, Any] = {
        "command": command,
        "date": dt.date.today().isoformat(),
        "machine_start": mach_start,
        "model": (
            f"GPT-2-small shape ({model.cfg.n_layers} layers, d_model {model.cfg.d_model}, "
            f"{model.cfg.n_heads} heads, vocab {model.cfg.d_vocab})"
        ),
        "d_model": model.cfg.d_model,
    }
    print(res["model"], flush=True)
    res["train"] = bench_train_step(model, 32, 16, repeats + 2, warmup=1)
    print("train step:", json.dumps(res["train"]), flush=True)
    res["gen"] = bench_generation(model, 1, 16, 32, 2 * repeats, warmup=2)
    print("generation:", json.dumps(res["gen"]), flush=True)
    res["loss"] = bench_loss(res["train"]["sites"], 32, model.cfg.d_model, repeats=50)
    print("loss:", json.dumps(res["loss"]), flush=True)
    del model
    gc.collect()
    if args.skip_memory:
        res["memory"] = {"rows": [], "pos": 16}
    else:
        res["memory"] = bench_memory(args.quick, (128, 1024), pos=16)
        print("memory:", json.dumps(res["memory"]), flush=True)
    res["seconds"] = time.perf_counter() - start
    res["machine_end"] = machine()
    if res["memory"]["rows"]:
        text = report(res)
        print()
        print(text)
        if not args.no_write:
            args.out.with_name("results.json").write_text(json.dumps(res, indent=1) + "\n")
            args.out.write_text(text)
            print(f"wrote {args.out} and {args.out.with_name('results.json')}")


if __name__ == "__main__":
    main()
