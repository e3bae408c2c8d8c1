"""Part 4 of ``bench_overhead.py``: the collector's peak memory, each count in a fresh process.

The child process builds the benchmark's model (``bench_overhead.build_model``), warms the
collector up, then samples RSS every millisecond while :func:`lineas_tl.collect_activations`
pools every site of ``n`` prompts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
_MEMORY_CHILD = r"""
import gc, json, sys, threading, time
sys.path.insert(0, {here!r})
import psutil, torch
from bench_overhead import build_model, token_batch
from lineas_tl import collect_activations

torch.set_num_threads({threads})
model = build_model({quick})
n, pos = {n}, {pos}
prompts = token_batch(n, pos, model.cfg.d_vocab, seed=4)
collect_activations(model, prompts[:16], batch_size=16, progress=False)  # warm-up: steady-state buffers
gc.collect()
proc = psutil.Process()
base = proc.memory_info().rss
peak = [base]
done = threading.Event()

def sample():
    while not done.is_set():
        peak[0] = max(peak[0], proc.memory_info().rss)
        time.sleep(0.001)

t = threading.Thread(target=sample, daemon=True)
t.start()
start = time.perf_counter()
out = collect_activations(model, prompts, batch_size=16, progress=False)
seconds = time.perf_counter() - start
done.set(); t.join()
peak[0] = max(peak[0], proc.memory_info().rss)
pooled = sum(x.numel() * x.element_size() for x in out.values())
print(json.dumps({{"n": n, "extra_mb": (peak[0] - base) / 2**20, "pooled_mb": pooled / 2**20,
                  "seconds": seconds, "sites": len(out)}}))
"""


def bench_memory(quick: bool, counts: tuple[int, ...], pos: int) -> dict[str, Any]:
    rows = []
    for n in counts:
        code = _MEMORY_CHILD.format(here=str(HERE), threads=torch.get_num_threads(), quick=quick, n=n, pos=pos)
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"memory child failed:\n{res.stderr[-3000:]}")
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    for r in rows:
        r["beyond_pooled_mb"] = r["extra_mb"] - r["pooled_mb"]
    return {"rows": rows, "pos": pos}
