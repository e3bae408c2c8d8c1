"""Which activation should drive the gate? Gate values on held-out toxic vs neutral prompts (SmolLM2).

Fits the probes once (two-stage, on a Mean-AcT steerer: the probes read the unsteered model, so
the method does not matter for them) on 32 toxic fit prompts vs 32 control prompts, then reads
``steerer.gates(text)`` for each driver on 30 held-out toxic evaluation prompts, 30 held-out
control prompts and 30 neutral target-style prompts. Writes ``drivers.json`` next to this file.

    python results/gate/measure_drivers.py

`drivers.json` was made before stop 28 (2026-12-05), at the library's default sites of that time,
every block's attention and MLP outputs (60 sites). This script has no `--sites`; it now fits at
the new default sites (`blocks.N.ln2.hook_out`, 30 sites on SmolLM2).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)

from lineas_tl import HookedSteerer, models  # noqa: E402
from lineas_tl.concepts import get_concept  # noqa: E402


def main(n: int = 30) -> dict:
    model = models.load("smollm2-135m")
    c = get_concept("toxicity")
    src, tgt = c.split(32, seed=0)
    control = c.control_prompts(32, seed=0)
    held_control = [p for p in c.control_pool if p not in set(control)][:n]
    neutral = [p for p in c.target_prompts if p not in set(tgt)][:n]
    toxic = c.eval_prompts[:n]
    start = time.perf_counter()
    steerer = HookedSteerer(model).fit(src, tgt, method="mean_act", control=control, gate=True, progress=False)
    out: dict = {"fit_seconds": time.perf_counter() - start, "gate": steerer.history_["gate"], "drivers": {}}
    for driver in ("token", "running", "prompt"):
        steerer.gate_.options.driver = driver
        row = {}
        for name, prompts in (("toxic_eval", toxic), ("control_heldout", held_control), ("neutral_target_style", neutral)):
            per_prompt, last = [], []
            for p in prompts:
                trace = steerer.gates(p, 1.0)
                g = trace.mean()[1:]  # skip BOS (never steered)
                per_prompt.append(float(g.mean()))
                last.append(float(g[-1]))
            row[name] = {"mean_gate": sum(per_prompt) / len(per_prompt), "last_token_gate": sum(last) / len(last)}
        t_e, c_h = row["toxic_eval"]["mean_gate"], row["control_heldout"]["mean_gate"]
        row["separation_mean_gate"] = t_e - c_h
        out["drivers"][driver] = row
        print(driver, json.dumps(row), flush=True)
    return out


if __name__ == "__main__":
    result = main(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
    Path(__file__).with_name("drivers.json").write_text(json.dumps(result, indent=1))
