"""The gate through the diffusers adapter, on the tiny random pipeline: one gate per image and site,
read at the first denoising step (the step the probes are fitted on) and kept for the later steps;
with classifier-free guidance both halves take the conditional row's gate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lineas_tl import HookedSteerer
from lineas_tl.diffusers import HookedPipeline
from lineas_tl.diffusion.tiny import tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")

OBJECTS = ["cat", "dog", "car", "house", "tree", "flower", "bird", "horse", "boat", "apple", "city", "garden"]
STYLES = ["photo", "painting", "drawing", "sketch"]
SOURCE = [f"a {s} of a red {o}" for s in STYLES for o in OBJECTS]
TARGET = [p.replace(" red ", " blue ") for p in SOURCE]
CONTROL = [f"a {s} of a {a} {o}" for s in STYLES for a in ("small", "old", "happy") for o in OBJECTS[:4]]
HELD = ["sky", "sea", "mountain", "street", "forest", "beach"]  # objects no fit saw
HELD_SOURCE = [f"a photo of a red {o}" for o in HELD]
HELD_CONTROL = [f"a photo of a {o}" for o in HELD]


@pytest.fixture(scope="module")
def fitted():
    torch.set_num_threads(1)
    pipe = tiny_pipeline(seed=0)
    hooked = HookedPipeline(pipe, num_inference_steps=2, guidance_scale=1.0)
    steerer = HookedSteerer(hooked).fit(SOURCE, TARGET, method="mean_act", control=CONTROL, gate=True, progress=False)
    yield pipe, hooked, steerer
    hooked.remove_hook_points()


def _strengths(steerer: HookedSteerer, prompt: str) -> dict[str, float]:
    """The image's gate at every site, as per-site strengths for the ungated maps."""
    trace = steerer.gates(prompt)
    return {s: float(v[0]) for s, v in trace.values.items()}


def test_gate_values_per_image_in_unit_interval_and_higher_on_source(fitted):
    _, _, steerer = fitted
    gate = steerer.gate_
    assert 0 < len(gate.active_sites) <= len(steerer.maps_) and "gate (prompt)" in repr(steerer)
    trace = steerer.gates(HELD_SOURCE[0])
    assert trace.tokens == ["<image>"] and all(v.shape == (1,) for v in trace.values.values())
    assert all(float(trace.values[s]) == 0.0 for s in steerer.maps_ if s not in gate.active_sites)
    source = torch.stack([steerer.gates(p).mean()[0] for p in HELD_SOURCE])
    control = torch.stack([steerer.gates(p).mean()[0] for p in HELD_CONTROL])
    assert float(torch.cat([source, control]).min()) >= 0 and float(torch.cat([source, control]).max()) <= 1
    assert float(source.min()) > float(control.max())  # held-out objects: red prompts open the gate


def test_gated_generation_is_the_maps_at_the_first_steps_gate(fitted):
    """Per image and site, one gate read at step 0 and kept: the ungated maps at that strength."""
    pipe, _, steerer = fitted
    prompt = HELD_SOURCE[1]
    gated = steerer.generate(prompt, strength=1.0, seed=0, output_type="np")  # seed 0: the pipeline's own
    ungated = HookedSteerer.__new__(HookedSteerer)
    vars(ungated).update({**vars(steerer), "gate_": None})
    expected = ungated.generate(prompt, strength=_strengths(steerer, prompt), seed=0, output_type="np")
    np.testing.assert_allclose(gated, expected, atol=1e-5)
    assert not np.allclose(gated, ungated.generate(prompt, strength=1.0, seed=0, output_type="np"), atol=1e-4)
    # strength 0 is the bare pipeline, bit for bit; the same seed gives the same image
    plain = pipe(prompt, num_inference_steps=2, guidance_scale=1.0, generator=torch.Generator().manual_seed(0),
                 output_type="np").images[0]  # fmt: skip
    assert np.array_equal(steerer.generate(prompt, strength=0.0, seed=0, output_type="np"), plain)
    assert np.array_equal(steerer.generate(prompt, strength=1.0, seed=0, output_type="np"), gated)


def test_gate_is_read_once_per_image_and_kept_for_later_steps(fitted):
    _, _, steerer = fitted

    class Log(dict):
        def __setitem__(self, site, value):
            self.setdefault("calls", []).append(site)
            super().__setitem__(site, value)

    hooks = steerer.fwd_hooks(1.0)
    state = hooks[0][1].state
    state.record = Log()
    steerer.runner.generate(HELD_SOURCE[:2], lambda _: hooks, seed=0, output_type="np")
    active = steerer.gate_.active_sites
    assert sorted(state.record["calls"]) == sorted(active * 2)  # two denoising steps; inactive sites not attached
    assert all(len(state._prompt[s]) == 2 for s in active)  # one gate per image, kept


def test_gated_steer_changes_source_images_more_than_control_images(fitted):
    _, _, steerer = fitted

    def change(prompts, gated):
        gate, steerer.gate_ = steerer.gate_, (steerer.gate_ if gated else None)
        try:
            a = steerer.generate(prompts, strength=0.0, seed=3, output_type="np")
            b = steerer.generate(prompts, strength=1.0, seed=3, output_type="np")
        finally:
            steerer.gate_ = gate
        return float(np.abs(a - b).mean())

    assert change(HELD_SOURCE, True) > 2 * change(HELD_CONTROL, True)
    assert change(HELD_SOURCE, False) < 1.5 * change(HELD_CONTROL, False)  # ungated: about alike


def test_guidance_save_load_and_token_driver(fitted, tmp_path):
    pipe, hooked, steerer = fitted
    steerer.save(tmp_path / "g")
    again = HookedSteerer.load(tmp_path / "g", hooked)
    prompt = HELD_SOURCE[2]
    assert np.array_equal(again.generate(prompt, seed=0, output_type="np"), steerer.generate(prompt, seed=0, output_type="np"))
    # classifier-free guidance: the UNet batch is [uncond, cond]; both take the conditional gate
    guided = HookedPipeline(pipe, num_inference_steps=2, guidance_scale=4.0)
    try:
        cfg = HookedSteerer.load(tmp_path / "g", guided)
        image = cfg.generate(prompt, seed=0, output_type="np")
        strengths = _strengths(cfg, prompt)  # read on the conditional half, as fitting does
        cfg.gate_ = None
        np.testing.assert_allclose(image, cfg.generate(prompt, strength=strengths, seed=0, output_type="np"), atol=1e-5)
    finally:
        guided.remove_hook_points()
    # the "token" driver gates each spatial position (per step): it runs, values in [0, 1]
    again.gate_.options.driver = "token"
    values = again.gates(prompt).matrix()
    assert float(values.min()) >= 0 and float(values.max()) <= 1
    assert again.generate(prompt, seed=0, output_type="np").shape == (16, 16, 3)


def test_end_to_end_lineas_with_a_gate_on_a_unet(fitted):
    _, hooked, _ = fitted
    kw = dict(method="lineas", steps=3, early_stop=False, warn=False, progress=False, seed=0)
    steerer = HookedSteerer(hooked).fit(SOURCE[:16], TARGET[:16], control=CONTROL[:16], gate={"threshold": 0.0}, **kw)
    assert steerer.gate_.trained and len(steerer.history_["control_loss"]) == 3
    assert np.isfinite(steerer.history_["loss"]).all()
    assert steerer.generate(HELD_SOURCE[0], seed=0, output_type="np").shape == (16, 16, 3)


def test_a_shared_gate_is_refused_on_a_pipeline(fitted):
    from lineas_tl.validate import SteeringInputError

    _, hooked, _ = fitted
    with pytest.raises(SteeringInputError, match="shared gate"):
        HookedSteerer(hooked).fit(SOURCE[:4], TARGET[:4], method="mean_act", control=CONTROL[:4], gate={"shared": True}, progress=False)
