"""How far the default LinEAS fit moves its scales: is strength past 1 a shift or a rescaling?

At strength ``s`` a map is ``z + s((omega - 1) z + b)``: a coordinate whose ``s (1 - omega) > 1``
has its variation removed or inverted. This fits LinEAS at the library's defaults (sites
``blocks.N.ln2.hook_out``, ``preset="auto"`` = ``paper_short``) on seed 0's fit of each concept,
with the gate run's control prompts and shared hard gate, and reports the spread of ``omega`` and
how many coordinates would be removed or inverted at each strength. Writes ``map_scales.md``.

    python results/gate/map_scales.py --threads 1
"""

from __future__ import annotations

import torch
from run_gate_results import HERE, protocol, script_setup

STRENGTHS = (1.0, 1.5, 2.0, 3.0)


def main() -> None:
    args, model = script_setup(["sentiment", "toxicity"])
    from lineas_tl import HookedSteerer, collect_activations

    lines = ["# The default LinEAS fit's scales (omega)", "", "`python results/gate/map_scales.py --threads 1`. "
             "Gated LinEAS (shared hard gate, control term) at the default sites and preset, seed 0's fit.", "",
             "| concept | coordinates | omega: 1st / 50th / 99th percentile | max abs(omega - 1) | removed or inverted at strength "
             + " / ".join(f"{s:g}" for s in STRENGTHS) + " | norm of b / mean norm of the source prompts' pooled activations (median over sites) |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for name in args.concepts:
        _, src, tgt, control, _ = protocol(name, seed=0)
        st = HookedSteerer(model).fit(src, tgt, control=control, gate={"shared": True, "hard": True}, progress=False)
        omega = torch.cat([m.weight.detach().flatten() for m in st.maps_.values()])
        flips = [int((s * (1 - omega) >= 1).sum()) for s in STRENGTHS]
        acts = collect_activations(model, src, list(st.maps_), progress=False)  # unsteered, each prompt's mean
        ratio = f"{float(torch.tensor([st.maps_[s].bias.norm() / acts[s].norm(dim=-1).mean() for s in st.maps_]).median()):.3f}"
        q = [float(omega.quantile(p)) for p in (0.01, 0.5, 0.99)]
        lines.append(f"| {name} | {omega.numel()} | {q[0]:.4f} / {q[1]:.4f} / {q[2]:.4f} | {float((omega - 1).abs().max()):.4f} | "
                     + " / ".join(map(str, flips)) + f" | {ratio} |")  # fmt: skip
        print(lines[-1], flush=True)
    (HERE / "map_scales.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
