"""Could LinEAS's control term make its maps steer only concept text? `results/gate/control_term.md`.

With the shared hard gate the maps are fitted in two stages, without the control term
(``GateOptions.end_to_end`` is False there), so every token of a prompt the gate opens is moved by
the same maps, concept or not. A control term in the maps' fit (``fit(control=..., control_weight=k)``,
ungated) could only make them selective by moving ``omega`` away from 1: a pure shift moves neutral
and concept activations alike. This fits LinEAS (default ``paper_short`` fit, seed 0's paired
sentiment draw) without the term and with ``control_weight`` 10, and reports ``omega``'s
percentiles and the mean pooled shift the maps make per site on 24 held-out neutral prompts (a
control draw of another seed, minus the fit's control prompts) against 24 held-out source prompts.

    python results/gate/control_term.py --threads 1
"""

from __future__ import annotations

import torch
from run_gate_results import HERE, protocol, script_setup

from lineas_tl import HookedSteerer
from lineas_tl.collect import pool_prepared

WEIGHTS = (0.0, 10.0)


def mean_shift(steerer: HookedSteerer, prompts: list[str]) -> float:
    """The maps' shift ``(omega - 1) z + b`` of each prompt's pooled activation, its norm averaged
    over prompts and sites (an affine map moves the mean activation by its value at the mean)."""
    plain = pool_prepared(steerer.runner, steerer.runner.prepare(prompts), steerer.sites, "mean", None, 8)
    norms = [((m.weight.flatten() - 1) * plain[s].flatten(1) + m.bias.flatten()).norm(dim=1).mean() for s, m in steerer.maps_.items()]
    return float(torch.stack(norms).mean())


def main() -> None:
    _, model = script_setup()
    c, src, tgt, control, _ = protocol("sentiment", seed=0, n_eval=48, paired=True)
    neutral = [p for p in c.control_prompts(32, seed=7) if p not in control][:24]
    lines = ["# The control term in LinEAS's maps (sentiment, seed 0's paired draw)", "", "`python results/gate/control_term.py` "
             "(its docstring says what it measures).", "", "| control_weight | omega 1st / 50th / 99th percentile | "
             "mean shift on held-out neutral prompts | on held-out source prompts | final loss |", "|---|---|---|---|---|"]  # fmt: skip
    for weight in WEIGHTS:
        kw = {} if weight == 0 else {"control": control, "control_weight": weight}
        try:
            steerer = HookedSteerer(model).fit(src, tgt, progress=False, **kw)
        except FloatingPointError as err:
            lines.append(f"| {weight:g} | {err} | | | |")
            continue
        omega = torch.cat([m.weight.flatten() for m in steerer.maps_.values()])
        q = torch.quantile(omega, torch.tensor([0.01, 0.5, 0.99])).tolist()
        lines.append(f"| {weight:g} | {q[0]:.4f} / {q[1]:.4f} / {q[2]:.4f} | {mean_shift(steerer, neutral):.4f} | "
                     f"{mean_shift(steerer, c.eval_prompts[:24]):.4f} | {steerer.history_['final_loss']:.4g} |")  # fmt: skip
        print(lines[-1], flush=True)
    (HERE / "control_term.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
