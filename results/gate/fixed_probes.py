"""Gated LinEAS with the probes kept at their two-stage fit (``gate={"train_probes": False}``).

The hypothesis it tests: in `full/sentiment`, end-to-end gated LinEAS (probes trained with the maps)
barely steers held-out prompts (best 0.375 against 0.240 ungated at strength 1), while Mean-AcT
gated with the same, untrained, probes reaches 0.223. Same protocol and seed as
`run_gate_results.py`; the table holds the one gated variant.

    python results/gate/fixed_probes.py --concept sentiment --threads 1 --sites outputs

`fixed_probes/sentiment` was made before stop 28 (2026-12-05), without `--sites`, when the library's
default sites were every block's attention and MLP outputs (`--sites outputs` reproduces it); without
`--sites` it now fits at the library's default sites (`blocks.N.ln2.hook_out` on SmolLM2).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from run_gate_results import HERE, protocol


def main() -> None:
    from lineas_tl import models
    from lineas_tl.evaluate import compare, format_frontier

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concept", default="sentiment")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=HERE / "fixed_probes")
    ap.add_argument("--sites", default=None, help="site preset, e.g. 'outputs' (default: the library's)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    _, src, tgt, control, common = protocol(args.concept)
    name = "lineas+gate"
    table = compare(models.load("smollm2-135m"), src, tgt, [name], control=control, sites=args.sites,
                    method_kwargs={name: {"gate": {"train_probes": False}}}, **common)  # fmt: skip
    out = args.out / args.concept
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "comparison.csv", index=False)
    (out / "frontier.md").write_text(format_frontier(table.attrs["frontier"]).to_markdown(index=False) + "\n")
    meta = {"seconds": round(time.perf_counter() - started), "gate": table.attrs["histories"][name].get("gate", {}),
            "command": f"python results/gate/fixed_probes.py --concept {args.concept} --threads {args.threads}"
                       + (f" --sites {args.sites}" if args.sites else "")}  # fmt: skip
    (out / "protocol.json").write_text(json.dumps(meta, indent=1, default=str))
    print(format_frontier(table.attrs["frontier"]).to_string(index=False))


if __name__ == "__main__":
    main()
