"""Peak memory of a LinEAS fit on SmolLM2 (CPU), with and without activation checkpointing.

    python benchmarks/bench_memory.py                # writes benchmarks/RESULTS_memory.md
    python benchmarks/bench_memory.py --quick        # one short setting, prints only

Each setting runs in a fresh process: load the embedded SmolLM2-135M, then reset the kernel's
peak-RSS counter (``/proc/self/clear_refs``, Linux) and fit LinEAS with the library defaults on
32 source and 32 target prompts for ``--steps`` steps (every minibatch is all 32 prompts), once
plain and once under :func:`lineas_tl.checkpointing.activation_checkpointing`. The figure is the
peak resident memory during the fit minus the resident memory just before it (after one warm-up
forward pass): what the fit adds on top of the loaded model. (``tracemalloc`` does not see
torch's allocations; the kernel's ``VmHWM`` does.) Prompts are padded with filler words to the stated token length, since the
activations the backward pass keeps grow with batch x tokens x depth. Both runs of a setting
must give the same maps; the largest difference is reported.

The fit is the library's default at the library's default sites: ``RESULTS_memory.md`` (2026-11-27)
was measured when those were ``preset="fast"`` at every block's attention and MLP outputs (60
sites); since stop 28 (2026-12-05) they are ``paper_short`` at ``blocks.N.ln2.hook_out`` (30 sites).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lineas_tl.atomic import atomic_write

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

OUT = Path(__file__).parent / "RESULTS_memory.md"
WORDS = "the weather was calm and the people in the town went about their day as usual".split()


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(tokens: int, steps: int, checkpoint: bool, maps_out: str) -> None:
    """Run one setting in this (fresh) process and print a JSON line."""
    import torch
    from safetensors.torch import save_file

    from lineas_tl import HookedSteerer, models
    from lineas_tl.checkpointing import activation_checkpointing
    from lineas_tl.concepts import get_concept

    torch.manual_seed(0)
    model = models.load("smollm2-135m")
    source, target = get_concept("toxicity").split(n_fit=32, seed=0)

    def lengthen(prompts: list[str]) -> list[str]:
        out = []
        for p in prompts:
            n = len(model.to_tokens(p)[0])
            pad = " ".join(WORDS[i % len(WORDS)] for i in range(max(0, tokens - n)))
            out.append((pad + ". " + p) if pad else p)
        return out

    source, target = lengthen(source), lengthen(target)
    n_tok = sum(len(model.to_tokens(p)[0]) for p in source) / len(source)
    steerer = HookedSteerer(model)
    # The first forward pass through a bridge allocates ~500 MB that stays (lazily built state and
    # the allocator's arenas); a warm-up pass keeps that out of what the fit adds.
    with torch.no_grad():
        steerer.runner.forward(steerer.runner.prepare(source[:2]).batch([0, 1]), [], steerer.sites)
    before = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    start = time.perf_counter()
    with activation_checkpointing(model, enabled=checkpoint):
        steerer.fit(source, target, steps=steps, batch_size=32, progress=False)
    seconds = time.perf_counter() - start
    peak = _status_kb("VmHWM")
    save_file({s: torch.cat([m.weight.flatten(), m.bias.flatten()]) for s, m in steerer.maps_.items()}, maps_out)
    print(json.dumps({
        "tokens": tokens, "mean_tokens": n_tok, "steps": steps, "checkpoint": checkpoint,
        "sites": list(steerer.sites), "preset": steerer.history_.get("preset"),
        "rss_before_mb": before / 1024, "peak_added_mb": (peak - before) / 1024, "seconds": seconds,
        "threads": torch.get_num_threads(),
    }))


def run_setting(tokens: int, steps: int, threads: int, fixed_mmap: bool) -> dict:
    import torch
    from safetensors.torch import load_file

    rows, maps = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for ckpt in (False, True):
            path = str(Path(tmp) / f"maps-{ckpt}.safetensors")
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            if fixed_mmap:  # glibc: blocks >= 64 KiB are mmapped and go back to the OS when freed
                env["MALLOC_MMAP_THRESHOLD_"] = "65536"
            cmd = [sys.executable, __file__, "--child", str(tokens), str(steps), str(int(ckpt)), path]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(done.stderr[-3000:])
            rows[ckpt] = json.loads(done.stdout.strip().splitlines()[-1])
            maps[ckpt] = load_file(path)
    diff = max(float((maps[True][s] - maps[False][s]).abs().max()) for s in maps[False])
    moved = max(float((maps[False][s][: len(maps[False][s]) // 2] - 1).abs().max()) for s in maps[False])
    del torch
    return {
        "plain": rows[False], "checkpointed": rows[True], "max_map_diff": diff, "max_omega_move": moved,
        "allocator": "MALLOC_MMAP_THRESHOLD_=65536" if fixed_mmap else "glibc default",
    }


def _version(dist: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def report(results: list[dict], command: str, seconds: float) -> str:
    import torch
    import transformers
    from overhead_report import describe_sites  # the benchmarks' folder is on sys.path when run as a script

    sites = results[0]["plain"]["sites"]

    lines = [
        "# Benchmarks: memory of a LinEAS fit, with and without activation checkpointing",
        "",
        f"Measured {dt.date.today().isoformat()} with `{command}` (total {seconds:.0f} s).",
        "",
        f"- Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, "
        f"torch threads {results[0]['plain']['threads']}",
        f"- Software: Python {platform.python_version()}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}, transformer-lens {_version('transformer-lens')}",
        f"- Model: SmolLM2-135M-Instruct (embedded, float32), {len(sites)} sites ({describe_sites(sites)[0]}).",
        f"- Fit: LinEAS, library defaults (`preset={results[0]['plain']['preset']!r}`), minibatch of all 32 source "
        "and 32 target toxicity prompts, prompts padded with filler text to the token length shown.",
        "- Memory: peak RSS during `fit(...)` minus RSS just before it (after one warm-up forward pass), "
        "each run in a fresh process (kernel `VmHWM` reset with `/proc/self/clear_refs`).",
        "",
        "| tokens per prompt (mean) | allocator | steps | peak added, plain | peak added, checkpointed | saved | "
        "time, plain | time, checkpointed | max map difference |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        p, c = r["plain"], r["checkpointed"]
        saved = 1 - c["peak_added_mb"] / p["peak_added_mb"]
        lines.append(
            f"| {p['mean_tokens']:.0f} | {r['allocator']} | {p['steps']} | {p['peak_added_mb']:.0f} MB | "
            f"{c['peak_added_mb']:.0f} MB | "
            f"**{saved:.0%}** | {p['seconds']:.1f} s | {c['seconds']:.1f} s | {r['max_map_diff']:.1e} "
            f"(omega moved up to {r['max_omega_move']:.1e}) |"
        )
    lines += [
        "",
        "## Reading the numbers",
        "",
        "Without checkpointing, the backward pass needs every block's intermediate activations (attention "
        "scores, MLP hidden states, norms) for the whole minibatch, so the fit's memory grows with "
        "batch x tokens x depth. Under `activation_checkpointing(model)` each block keeps only its input "
        "and recomputes the rest during the backward pass, at the cost of about one more forward pass per "
        "step (the time columns). The maps are the same: the recomputation runs the same hooks on the same "
        "inputs. What remains is the model itself, the per-block inputs, one block's recomputed "
        "activations at a time, and the pooled statistics.",
        "",
        "The allocator column matters on the CPU. With glibc's default, the threshold above which a block "
        "is mmapped (and handed back to the OS when freed) grows with the blocks freed, so after the first "
        "large tensors most allocations come from heap arenas that keep their pages: RSS then overstates "
        "the live memory, and the saving looks smaller. With the threshold fixed at 64 KiB "
        "(`MALLOC_MMAP_THRESHOLD_=65536`) RSS follows the live tensors closely, which is what a GPU's "
        "caching allocator would show; that row is the one to read for the effect of checkpointing. "
        "The first forward pass through a `TransformerBridge` also allocates about 500 MB that stays; a "
        "warm-up pass before the measurement keeps it out of both columns.",
        "",
        "Caveats. The times were taken on a 2-core machine shared with several other jobs (load average "
        "about 12-17): they are not a measure of checkpointing's cost, which is about one extra forward "
        "pass per step (on an H100, 874 vs 1094 ms per step, `benchmarks/RESULTS_device_check.md`). The "
        "checkpointed fit still adds about half of the plain fit's peak, more than the per-block inputs "
        "(about 5 MB per block at 65 tokens) and one block's activations explain; the rest was not "
        "traced here (candidates: the probe and target-statistics passes, autograd state outside the "
        "blocks, allocator slack). On the GPU the same fit adds 690 MiB plain and 380 MiB checkpointed "
        "(peak CUDA memory minus the 540 MB of weights).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        tokens, steps, ckpt, path = sys.argv[2:6]
        child(int(tokens), int(steps), bool(int(ckpt)), path)
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one short setting, print only")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    settings = [(16, True)] if args.quick else [(16, True), (16, False), (64, True), (64, False)]
    start = time.perf_counter()
    results = []
    for tokens, fixed in settings:
        r = run_setting(tokens, args.steps, args.threads, fixed)
        print(json.dumps(r))
        results.append(r)
    command = "python benchmarks/bench_memory.py" + (" --quick" if args.quick else "")
    command += "" if args.steps == 2 else f" --steps {args.steps}"
    command += "" if args.threads == 1 else f" --threads {args.threads}"
    text = report(results, command, time.perf_counter() - start)
    if args.quick:
        print(text)
        return
    atomic_write(OUT, lambda tmp: Path(tmp).write_text(text))
    print(text)


if __name__ == "__main__":
    main()
