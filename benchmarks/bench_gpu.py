"""Speed on one GPU: LinEAS fit steps against a hand-written floor, steered generation against HF.

    python benchmarks/bench_gpu.py                 # on a CUDA GPU: writes benchmarks/RESULTS_gpu.md (~6 min, H200)
    python benchmarks/bench_gpu.py --cpu-smoke     # tiny shapes on the CPU in seconds (the test suite runs it)

Models: random weights in SmolLM2-135M's and SmolLM2-1.7B's shapes, built from a ``LlamaConfig``
(nothing is downloaded; :mod:`gpu_models`), in float32 and bfloat16. The same weights are read
through ``TransformerBridge`` (lineas-tl) and as a plain Hugging Face model (the floor and HF
``generate``). Prompts: 32 source and 32 target prompts of 8-16 random tokens (token ids).

Per shape and dtype:

1. **Fit step.** ``HookedSteerer.fit`` at every attention and MLP output (``sites="outputs"``, where
   the floor below hooks; the library's default sites until stop 28, 2026-12-05) with the preset
   those sites get by default (``"fast"``; every prompt in every step, no early stop):
   the median time between steps (``history_["time"]``) after a warm-up, eager and with
   ``compile=True`` (the full-batch step captured as a CUDA graph, :mod:`lineas_tl.capture`).
   Against (a) the **floor**: the same step written by hand on the HF model (forward hooks applying
   ``w * z + b`` after every attention and MLP block, masked mean pooling, the sorted W2 against a
   presorted target, Adam, one ``float(loss)`` a step), and (b) a **bare forward+backward** of the
   frozen model (gradients to block 0's attention output; no maps, pooling, loss or optimiser).
2. **Generation.** 32 prompts x 32 greedy tokens, KV cache: HF ``generate`` vs the bridge's,
   unsteered and steered at strength 1 (the eager fit's maps). The fastest of the repeats.
3. **Converged fit** (1.7B shape, float32): the library's default fit at its default sites, to its
   stop, eager vs ``compile=True``: seconds and final loss. (Since stop 28 that is ``paper_short`` at
   ``blocks.N.ln2.hook_out``, which ends after its 300 steps; before, ``fast`` at the outputs.)
4. **Evaluation sampling** (first shape): ``lineas_tl.evaluate.continuations`` of 48 prompts x 3
   samples (the paper's sampling), steered, at ``batch_size`` 16 (the library default) vs all 144
   rows in one batch (different draws, same distribution; see :mod:`lineas_tl.evaluate.sampling`).

Targets (issue 20): steered generation <= 1.10x HF ``generate``; eager fit step <= 1.15x the floor;
the converged compiled fit on 1.7B <= 10 s with the eager fit's final loss within 1%.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from gpu_models import build, token_prompts  # noqa: E402

from lineas_tl import HookedSteerer  # noqa: E402

HERE = Path(__file__).resolve().parent


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def prompt_sets(vocab: int, n: int) -> tuple[list[list[int]], list[list[int]]]:
    if vocab > 30000:
        return token_prompts(n, 1000, 9000, seed=1), token_prompts(n, 20000, 28000, seed=2)
    return token_prompts(n, 3, vocab // 2, seed=1), token_prompts(n, vocab // 2, vocab, seed=2)


# ----------------------------------------------------------------------------- 1. fit steps
def lineas_step(bridge: Any, src: Any, tgt: Any, steps: int, warm: int, compile: bool) -> dict[str, Any]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        steerer = HookedSteerer(bridge, sites="outputs").fit(  # the floor's sites: attention and MLP outputs
            src, tgt, steps=warm + steps, early_stop=False, seed=0, progress=False, warn=False, compile=compile
        )
    times = steerer.history_["time"]
    deltas = [b - a for a, b in zip(times[warm - 1 :], times[warm:])]
    notes = sorted({str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)})
    return {"step_s": statistics.median(deltas), "loss": steerer.history_["loss"][-1], "notes": notes,
            "steerer": steerer}  # fmt: skip


def floor_step(hf: Any, src: Any, tgt: Any, steps: int, warm: int, device: str) -> dict[str, Any]:
    """The LinEAS step written by hand on the HF model: the floor a library can hope to reach."""
    from lineas_tl.runner import TokenSequences

    layers = hf.model.layers
    dtype = next(hf.parameters()).dtype
    d = hf.config.hidden_size
    seqs = [torch.tensor(p) for p in src]
    batch = TokenSequences(seqs, 2, torch.device(device)).batch(range(len(seqs)))
    ids, mask = batch.kwargs["input"], batch.kwargs["attention_mask"]
    m = mask.to(dtype)
    count = m.sum(1, keepdim=True)
    w = [torch.ones(d, device=device, requires_grad=True) for _ in range(2 * len(layers))]
    b = [torch.zeros(d, device=device, requires_grad=True) for _ in range(2 * len(layers))]
    pooled: list[torch.Tensor] = []

    def hook(i: int) -> Any:
        def fn(module: Any, args: Any, out: Any) -> Any:
            z = out[0] if isinstance(out, tuple) else out
            z = torch.addcmul(b[i].to(dtype), z, w[i].to(dtype))
            pooled.append((torch.einsum("bpd,bp->bd", z, m) / count).float())
            return (z, *out[1:]) if isinstance(out, tuple) else z

        return fn

    handles = []
    for k, layer in enumerate(layers):
        handles.append(layer.self_attn.register_forward_hook(hook(2 * k)))
        handles.append(layer.mlp.register_forward_hook(hook(2 * k + 1)))
    with torch.no_grad():  # the target: the untouched model's pooled activations, sorted once
        t_seqs = [torch.tensor(p) for p in tgt]
        t_batch = TokenSequences(t_seqs, 2, torch.device(device)).batch(range(len(t_seqs)))
        hf.model(t_batch.kwargs["input"], attention_mask=t_batch.kwargs["attention_mask"])
        target = torch.stack(pooled, 1).sort(dim=0).values
        pooled.clear()
    opt = torch.optim.Adam(w + b, lr=1e-2, betas=(0.9, 0.9))
    times = []
    try:
        for step in range(warm + steps):
            sync(device)
            start = time.perf_counter()
            hf.model(ids, attention_mask=mask)
            u = torch.stack(pooled, 1)
            pooled.clear()
            loss = (u.sort(dim=0).values - target).pow(2).mean(0).sum(-1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            float(loss)
            times.append(time.perf_counter() - start)
    finally:
        for h in handles:
            h.remove()
    return {"step_s": statistics.median(times[warm:])}


def bare_step(hf: Any, src: Any, steps: int, warm: int, device: str) -> dict[str, Any]:
    """Forward and backward of the frozen model, gradients to block 0's attention output."""
    from lineas_tl.runner import TokenSequences

    seqs = [torch.tensor(p) for p in src]
    batch = TokenSequences(seqs, 2, torch.device(device)).batch(range(len(seqs)))
    ids, mask = batch.kwargs["input"], batch.kwargs["attention_mask"]

    def leaf(module: Any, args: Any, out: Any) -> Any:
        z = out[0].detach().requires_grad_(True)
        return (z, *out[1:])

    handle = hf.model.layers[0].self_attn.register_forward_hook(leaf)
    times = []
    try:
        for _ in range(warm + steps):
            sync(device)
            start = time.perf_counter()
            out = hf.model(ids, attention_mask=mask).last_hidden_state
            out.float().pow(2).mean().backward()
            sync(device)
            times.append(time.perf_counter() - start)
    finally:
        handle.remove()
    return {"step_s": statistics.median(times[warm:])}


# ----------------------------------------------------------------------------- 2. generation
def generation(bridge: Any, hf: Any, steerer: Any, prompts: Any, new: int, repeats: int, device: str) -> dict[str, Any]:
    from lineas_tl.runner import TokenSequences

    seqs = [torch.tensor(p) for p in prompts]
    batch = TokenSequences(seqs, 2, torch.device(device)).batch(range(len(seqs)), padding_side="left")
    ids, mask = batch.kwargs["input"], batch.kwargs["attention_mask"]
    kw = dict(max_new_tokens=new, return_type="tokens", stop_at_eos=False, do_sample=False)

    def hf_generate() -> Any:
        return hf.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                           pad_token_id=2, eos_token_id=None)  # fmt: skip

    def unsteered() -> Any:
        return steerer.runner.generate(prompts, lambda tracker: [], **kw)

    def steered() -> Any:
        return steerer.generate(prompts, 1.0, **kw)

    fns = {"hf": hf_generate, "unsteered": unsteered, "steered": steered}
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.no_grad():
        for fn in fns.values():
            fn()
        for r in range(repeats):
            names = list(fns)[r % 3 :] + list(fns)[: r % 3]
            for name in names:
                sync(device)
                start = time.perf_counter()
                fns[name]()
                sync(device)
                times[name].append(time.perf_counter() - start)
    return {k: min(v) for k, v in times.items()}


# ----------------------------------------------------------------------------- 3. converged fit
def converged(bridge: Any, src: Any, tgt: Any, device: str) -> dict[str, Any]:
    out = {}
    for name, compile in (("eager", False), ("compile", True)):
        sync(device)
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            s = HookedSteerer(bridge).fit(src, tgt, seed=0, progress=False, warn=False, compile=compile)
        sync(device)
        out[name] = {"seconds": time.perf_counter() - start, "steps": s.history_["steps"],
                     "final_loss": s.history_["final_loss"],
                     "notes": sorted({str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)})}  # fmt: skip
    out["loss_gap"] = abs(out["compile"]["final_loss"] - out["eager"]["final_loss"]) / abs(out["eager"]["final_loss"])
    return out


# ----------------------------------------------------------------------------- 4. evaluation sampling
def sampling(bridge: Any, steerer: Any, n_prompts: int, device: str) -> dict[str, Any]:
    from lineas_tl.evaluate.sampling import PAPER, continuations

    prompts = [f"the cat sat on the mat {i}" for i in range(n_prompts)]
    rows = n_prompts * PAPER.n_samples
    out = {"rows": rows}
    for bs in (16, rows):
        sync(device)
        start = time.perf_counter()
        continuations(bridge, prompts, steerer, 1.0, batch_size=bs)
        sync(device)
        out[f"batch_{bs}_s"] = time.perf_counter() - start
    return out


# ----------------------------------------------------------------------------- the report
def fmt_s(x: float) -> str:
    return f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.2f} s"


def report(res: dict[str, Any]) -> str:
    lines = [
        "# GPU benchmark: fit steps and generation against the floor",
        "",
        f"Made with `{res['command']}` on {res['date']} ({res['seconds']:.0f} s).",
        "",
        f"- Machine: {res['machine']}",
        f"- Software: {res['software']}",
        f"- Prompts: {res['prompts']} source + {res['prompts']} target of 8-16 tokens; fit steps: median of "
        f"{res['steps']} after {res['warm']} warm-up; generation: {res['prompts']} prompts x {res['new_tokens']} "
        "greedy tokens, KV cache, fastest of the repeats.",
        "",
        "| shape | dtype | measurement | lineas-tl | reference | ratio | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in res["rows"]:
        f, g = row["fit"], row["gen"]
        tag = f"| {row['shape']} | {row['dtype']} |"
        lines += [
            f"{tag} fit step, eager vs hand-written floor | {fmt_s(f['eager_s'])} | {fmt_s(f['floor_s'])} | "
            f"**{f['eager_s'] / f['floor_s']:.2f}x** | <= 1.15x |",
            f"{tag} fit step, `compile=True` vs floor | {fmt_s(f['compiled_s'])} | {fmt_s(f['floor_s'])} | "
            f"{f['compiled_s'] / f['floor_s']:.2f}x | |",
            f"{tag} fit step, eager vs bare forward+backward | {fmt_s(f['eager_s'])} | {fmt_s(f['bare_s'])} | "
            f"{f['eager_s'] / f['bare_s']:.2f}x | |",
            f"{tag} generation, bridge unsteered vs HF `generate` | {fmt_s(g['unsteered'])} | {fmt_s(g['hf'])} | "
            f"{g['unsteered'] / g['hf']:.2f}x | |",
            f"{tag} generation, bridge steered (strength 1) vs HF `generate` | {fmt_s(g['steered'])} | "
            f"{fmt_s(g['hf'])} | **{g['steered'] / g['hf']:.2f}x** | <= 1.10x |",
        ]
    lines.append("")
    for row in res["rows"]:
        for note in row["fit"]["notes"]:
            lines.append(f"- {row['shape']} {row['dtype']}, `compile=True`: {note}")
    if res.get("converged"):
        c = res["converged"]
        lines += [
            "",
            f"**Converged default fit** ({c['shape']}, {c['dtype']}): eager {c['eager']['seconds']:.1f} s "
            f"({c['eager']['steps']} steps, final loss {c['eager']['final_loss']:.6g}); `compile=True` "
            f"{c['compile']['seconds']:.1f} s ({c['compile']['steps']} steps, final loss "
            f"{c['compile']['final_loss']:.6g}); loss gap {c['loss_gap']:.2%} (targets: <= 10 s, <= 1%).",
        ]
        for note in c["compile"]["notes"]:
            lines.append(f"- `compile=True`: {note}")
    if res.get("sampling"):
        s = res["sampling"]
        lines += [
            "",
            f"**Evaluation sampling** ({s['shape']}, steered, the paper's sampling, {s['rows']} rows): "
            f"batch_size 16: {s['batch_16_s']:.2f} s; all rows in one batch: {s['batch_' + str(s['rows']) + '_s']:.2f} s.",
        ]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU: the code paths, not a result")
    ap.add_argument("--shapes", default=None, help="comma-separated: 135m,1.7b (default), tiny")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--steps", type=int, default=None, help="timed fit steps (default 20; smoke 3)")
    ap.add_argument("--prompts", type=int, default=None, help="source and target prompts (default 32; smoke 8)")
    ap.add_argument("--new-tokens", type=int, default=None, help="generated tokens (default 32; smoke 4)")
    ap.add_argument("--repeats", type=int, default=None, help="generation repeats (default 3; smoke 1)")
    ap.add_argument("--skip-converged", action="store_true", help="skip the converged 1.7B fits")
    ap.add_argument("--skip-sampling", action="store_true", help="skip the evaluation sampling measurement")
    ap.add_argument("--out", type=Path, default=None, help="results file (default benchmarks/RESULTS_gpu.md on a GPU)")
    args = ap.parse_args()
    smoke = args.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        print("no CUDA device: run with --cpu-smoke to check the code paths on the CPU")
        return 2
    device = "cpu" if smoke else "cuda"
    if smoke:
        torch.set_num_threads(1)
    torch.backends.cuda.matmul.allow_tf32 = False
    shapes = (args.shapes or ("tiny" if smoke else "135m,1.7b")).split(",")
    dtypes = args.dtypes.split(",")
    steps, warm = args.steps or (3 if smoke else 20), 2 if smoke else 5
    n = args.prompts or (8 if smoke else 32)
    new = args.new_tokens or (4 if smoke else 32)
    repeats = args.repeats or (1 if smoke else 3)
    started = time.perf_counter()
    out = args.out or (None if smoke else HERE / "RESULTS_gpu.md")
    command = "python benchmarks/bench_gpu.py" + " ".join([""] + sys.argv[1:])
    machine = torch.cuda.get_device_name(0) if not smoke else f"CPU ({platform.processor() or platform.machine()}), 1 thread"
    import transformers

    res: dict[str, Any] = {
        "command": command, "date": dt.date.today().isoformat(), "machine": machine,
        "software": f"Python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}",
        "prompts": n, "steps": steps, "warm": warm, "new_tokens": new, "rows": [],
    }  # fmt: skip
    for shape in shapes:
        for dtype in dtypes:
            bridge, hf = build(shape, dtype, device)
            src, tgt = prompt_sets(hf.config.vocab_size, n)
            eager = lineas_step(bridge, src, tgt, steps, warm, compile=False)
            compiled = lineas_step(bridge, src, tgt, steps, warm, compile=True)
            fit = {"eager_s": eager["step_s"], "compiled_s": compiled["step_s"], "notes": compiled["notes"],
                   "floor_s": floor_step(hf, src, tgt, steps, warm, device)["step_s"],
                   "bare_s": bare_step(hf, src, steps, warm, device)["step_s"]}  # fmt: skip
            gen = generation(bridge, hf, eager["steerer"], src, new, repeats, device)
            row = {"shape": shape, "dtype": dtype, "fit": fit, "gen": gen}
            print(json.dumps(row), flush=True)
            res["rows"].append(row)
            if not args.skip_sampling and "sampling" not in res:
                res["sampling"] = {"shape": shape, **sampling(bridge, eager["steerer"], 4 if smoke else 48, device)}
                print("sampling:", json.dumps(res["sampling"]), flush=True)
            big = shape == (shapes[-1] if smoke else "1.7b") and dtype == dtypes[0]
            if big and not args.skip_converged and "converged" not in res:
                res["converged"] = {"shape": shape, "dtype": dtype, **converged(bridge, src, tgt, device)}
                print("converged:", json.dumps(res["converged"]), flush=True)
            del bridge, hf, eager, compiled
            gc.collect()
            if not smoke:
                torch.cuda.empty_cache()
            write(res, out, started, final=False)  # a run cut short still leaves what it measured
    print(write(res, out, started, final=True))
    return 0


def write(res: dict[str, Any], out: Path | None, started: float, final: bool) -> str:
    res["seconds"] = time.perf_counter() - started
    text = report(res) + ("" if final else "\n(partial: the run was still going when this was written)\n")
    if out is not None:
        out.write_text(text)
        out.with_suffix(".json").write_text(json.dumps(res, indent=1, default=str) + "\n")
        if final:
            print(f"wrote {out}")
    return text


if __name__ == "__main__":
    raise SystemExit(main())
