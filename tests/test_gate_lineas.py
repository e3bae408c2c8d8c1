"""End-to-end gated LinEAS: maps and probe weights trained together with the control term."""

import torch

from lineas_tl import HookedSteerer
from lineas_tl.gate import fit_gate
from test_gate import CONTROL


def test_lineas_trains_maps_and_gate_together(gpt2_model, text_sets):
    src, tgt = text_sets["source"][:16], text_sets["target"][:16]
    kw = dict(method="lineas", steps=6, early_stop=False, warn=False, progress=False, seed=0)
    steerer = HookedSteerer(gpt2_model).fit(src, tgt, control=CONTROL, gate={"threshold": 0.0}, **kw)
    gate = steerer.gate_
    assert gate is not None and gate.trained and gate.active_sites == list(steerer.maps_)
    h = steerer.history_
    assert len(h["control_loss"]) == 6 and h["control_weight"] == 1.0 and h["gate"]["trained"]
    # the probes' weights moved away from the two-stage fit they started from
    plain = HookedSteerer(gpt2_model)
    from lineas_tl.methods.base import FitContext

    ctx = FitContext(plain.runner, plain.runner.prepare(src), plain.runner.prepare(tgt), plain.sites, batch_size=32)
    ctx.control = plain.runner.prepare(CONTROL)
    start = fit_gate(ctx, plain.sites, gate.options)
    moved = [float((gate.probes[s].weight - start.probes[s].weight).abs().max()) for s in plain.sites]
    assert max(moved) > 0
    # train_probes=False: the maps train through the two-stage probes, which stay where they were
    fixed = HookedSteerer(gpt2_model).fit(src, tgt, control=CONTROL, gate={"threshold": 0.0, "train_probes": False}, **kw)
    assert not fixed.gate_.trained and not fixed.history_["gate"]["trained"]
    assert all(torch.equal(fixed.gate_.probes[s].weight, start.probes[s].weight) for s in plain.sites)
    assert any(float((fixed.maps_[s].weight - steerer.maps_[s].weight).abs().max()) > 0 for s in plain.sites)
    assert all(not p.weight.requires_grad for p in gate.probes.values())
    # end_to_end=False: two stages, as for the baselines: the ungated maps, then the two-stage probes
    two = HookedSteerer(gpt2_model).fit(src, tgt, control=CONTROL, gate={"threshold": 0.0, "end_to_end": False}, **kw)
    ungated = HookedSteerer(gpt2_model).fit(src, tgt, **kw)
    assert not two.gate_.trained and "control_loss" not in two.history_
    assert all(torch.equal(two.maps_[s].weight, ungated.maps_[s].weight) for s in plain.sites)
    assert all(torch.equal(two.gate_.probes[s].weight, start.probes[s].weight) for s in plain.sites)
    trace = steerer.gates(src[0])
    assert trace.matrix().shape[0] == len(steerer.maps_)


def test_control_alone_adds_the_term_without_a_gate(gpt2_model, text_sets):
    src, tgt = text_sets["source"][:16], text_sets["target"][:16]
    kw = dict(method="lineas", steps=4, init="identity", early_stop=False, warn=False, progress=False, seed=0)
    # at the sublayer outputs (the fast preset's Adam): SGD's step grows with control_weight=100
    without = HookedSteerer(gpt2_model, "outputs").fit(src, tgt, **kw)
    heavy = HookedSteerer(gpt2_model, "outputs").fit(src, tgt, control=CONTROL, control_weight=100.0, **kw)
    assert heavy.gate_ is None and "gate" not in heavy.history_
    assert len(heavy.history_["control_loss"]) == 4
    # a heavy control term keeps the control prompts' activations closer to the unsteered model's
    from lineas_tl import collect_activations

    plain = collect_activations(gpt2_model, CONTROL, without.sites, progress=False)

    def drift(s):
        with s.steer(1.0):
            moved = collect_activations(gpt2_model, CONTROL, s.sites, progress=False)
        return sum(float((moved[k] - plain[k]).pow(2).sum()) for k in plain)

    assert drift(heavy) < drift(without)
    assert torch.isfinite(torch.tensor(heavy.history_["loss"])).all()
