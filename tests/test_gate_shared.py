"""The shared gate (one value per prompt for every site) and the hard gate: the vote pinned by hand,
exact with and without the KV cache and with left padding, every site steered together, the
options' checks, two-stage LinEAS, and save/load."""

import json
import math

import pytest
import torch

from lineas_tl import HookedSteerer
from lineas_tl.gate import GateOptions, generation_batch
from lineas_tl.validate import SteeringInputError
from test_gate import ACT, CONTROL, toy_hook


def test_hard_gate_arithmetic_by_hand():
    """Hard: the probe's logit at least 0 opens the token fully, below it leaves it alone."""
    hook, state = toy_hook("token")
    state.hard = True
    out = hook(ACT.clone(), hook=None)
    g = torch.tensor([0.0, 1.0, 1.0])  # logits -1, 0, 1
    assert torch.equal(state.record["s"][0], g)
    expected = ACT[0] + 0.5 * g[:, None] * torch.stack([ACT[0, :, 0], torch.ones(3)], 1)
    assert torch.allclose(out[0], expected, atol=1e-6)


def test_shared_gate_arithmetic_by_hand():
    """Shared: every counted token takes its row's value, whatever the site's own probe says."""
    hook, state = toy_hook("prompt", pool_mask=torch.tensor([[0, 1, 1], [1, 1, 1]]))
    state.shared = torch.tensor([0.25, 1.0])
    hook.probe.active = False  # a site below the threshold is steered too
    assert not hook.skips
    act = torch.cat([ACT, ACT])
    out = hook(act.clone(), hook=None)
    g = torch.tensor([[0.0, 0.25, 0.25], [1.0, 1.0, 1.0]])
    assert torch.equal(state.record["s"], g)
    step = torch.stack([ACT[0, :, 0], torch.ones(3)], 1)
    assert torch.allclose(out, act + 0.5 * g[..., None] * step, atol=1e-6)


def test_options_are_checked():
    assert GateOptions(shared=True).end_to_end is False and GateOptions(hard=True).end_to_end is False
    assert GateOptions().end_to_end is True
    with pytest.raises(SteeringInputError, match="two stages"):
        GateOptions(shared=True, end_to_end=True)
    with pytest.raises(SteeringInputError, match="whole prompt"):
        GateOptions(shared=True, driver="token")
    with pytest.raises(SteeringInputError, match="add shared=True"):
        GateOptions(vote_sites=2)
    with pytest.raises(SteeringInputError, match="vote_sites must be >= 1"):
        GateOptions(shared=True, vote_sites=0)


# --------------------------------------------------------------------------- on a model
@pytest.fixture(scope="module")
def shared(gpt2_dir):
    from conftest import SOURCE_WORDS, TARGET_WORDS, boot, make_prompts

    model = boot(gpt2_dir)
    src, tgt = make_prompts(SOURCE_WORDS, 16, seed=1), make_prompts(TARGET_WORDS, 16, seed=2)
    fit = {
        kind: HookedSteerer(model).fit(src, tgt, method="mean_act", control=CONTROL,
                                       gate={"shared": True, "hard": kind == "hard", "threshold": 0.0}, progress=False)
        for kind in ("soft", "hard")
    }  # fmt: skip
    return model, fit, (src, tgt)


def vote_by_hand(model, steerer, prompts, sites):
    """The sigmoid of ``sites``' probe logits, each on the unsteered prompt's mean activation over
    its counted tokens, averaged over the sites."""
    batch = generation_batch(steerer.runner, prompts)
    _, cache = model.run_with_cache(batch.kwargs["input"], attention_mask=batch.kwargs["attention_mask"])
    mask = batch.mask.float()
    means = {site: (cache[site] * mask[..., None]).sum(1) / mask.sum(1, keepdim=True) for site in sites}
    return torch.sigmoid(torch.stack([steerer.gate_.probes[s].unfolded_logit(means[s]) for s in sites]).mean(0))


def test_vote_by_hand(shared):
    """The gate is the active probes' vote on the unsteered prompt (:func:`vote_by_hand`)."""
    model, fit, _ = shared
    steerer = fit["soft"]
    prompts = ["the cat sat", "you are a stupid idiot and"]
    expected = vote_by_hand(model, steerer, prompts, steerer.gate_.active_sites)
    got = steerer.prompt_gate(prompts)
    assert torch.allclose(got, expected, atol=1e-5)
    hard = fit["hard"].prompt_gate(prompts)
    assert torch.equal(hard, (expected >= 0.5).float())


def test_a_vote_of_the_first_sites_stops_its_pass_there(shared, tmp_path):
    """``vote_sites=k``: the first k active probes vote, the pass over the prompt reaches no later
    site, the option is read at inference (set on a fitted steerer) and saved with it."""
    model, fit, _ = shared
    steerer = fit["soft"]
    prompts = ["the cat sat", "you are a stupid idiot and"]
    active = steerer.gate_.active_sites
    assert len(active) >= 3, "the fixture should have several active probes"
    expected = vote_by_hand(model, steerer, prompts, active[:2])
    reached: list[str] = []
    late = [s for s in steerer.maps_ if s not in active[:2]][-1]
    steerer.gate_.options.vote_sites = 2
    try:
        model.add_hook(late, lambda act, hook: reached.append(hook.name))
        got = steerer.prompt_gate(prompts)
        model.reset_hooks()
        assert torch.allclose(got, expected, atol=1e-5)
        assert reached == [], f"the vote's pass ran on to {late}"
        assert "prompt vote of the first 2 active sites" in repr(steerer)
        steerer.save(tmp_path / "v")
        again = HookedSteerer.load(tmp_path / "v", model)
        assert again.gate_.options.vote_sites == 2 and torch.equal(again.prompt_gate(prompts), got)
    finally:
        model.reset_hooks()
        steerer.gate_.options.vote_sites = None


@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_generation_exact_with_and_without_kv_cache_and_padding(shared, kind):
    steerer = shared[1][kind]
    prompts = ["the cat", "you are a stupid idiot and", "have a"]
    kw = dict(max_new_tokens=5, return_type="tokens")
    assert torch.equal(steerer.generate(prompts, 1.0, **kw), steerer.generate(prompts, 1.0, use_past_kv_cache=False, **kw))
    batched = steerer.generate(prompts, 1.0, max_new_tokens=5, return_type="continuation")
    assert batched == [steerer.generate(p, 1.0, max_new_tokens=5, return_type="continuation") for p in prompts]


def test_every_site_follows_the_prompt(shared):
    """A shut prompt is not steered at all; an open one is steered at every site by the same value."""
    model, fit, (src, _) = shared
    steerer = fit["hard"]
    texts = [*src[:4], *CONTROL[:4]]
    values = steerer.prompt_gate(texts)
    assert set(values.tolist()) == {0.0, 1.0}, "the fixture should open some prompts and shut others"
    shut, opened = texts[values.tolist().index(0.0)], texts[values.tolist().index(1.0)]
    for text, steered in ((shut, False), (opened, True)):
        tokens = model.to_tokens(text)
        plain = model(tokens)
        with steerer.steer(1.0, prompt_gate=steerer.prompt_gate(text)):
            assert torch.equal(model(tokens), plain) != steered, text
    trace = steerer.gates(opened)
    counted = generation_batch(steerer.runner, opened).mask[0].bool()
    for site in steerer.maps_:
        assert torch.equal(trace.values[site][counted], torch.ones(int(counted.sum()))), site
        assert float(trace.values[site][~counted].abs().sum()) == 0.0
    assert "shared hard gate (prompt vote)" in repr(steerer)


def test_a_forward_pass_of_ones_own_needs_the_prompt_gate(shared):
    model, fit, _ = shared
    steerer = fit["soft"]
    with pytest.raises(SteeringInputError, match="prompt_gate=steerer.prompt_gate"):
        steerer.fwd_hooks(1.0)
    with pytest.raises(ValueError, match="shared gate"):
        HookedSteerer(model).fit(*shared[2], method="mean_act", progress=False).prompt_gate("the cat")


def test_lineas_fits_a_shared_hard_gate_in_two_stages(shared):
    model, _, (src, tgt) = shared
    steerer = HookedSteerer(model).fit(src, tgt, control=CONTROL, gate={"shared": True, "hard": True, "threshold": 0.0},
                                       steps=3, warn=False, progress=False)  # fmt: skip
    h = steerer.history_["gate"]
    assert h["shared"] and h["hard"] and not h["end_to_end"] and not h["trained"]
    plain = HookedSteerer(model).fit(src, tgt, steps=3, warn=False, progress=False)
    for site, m in plain.maps_.items():  # the first stage is the ungated fit: the control set is not seen
        assert torch.equal(m.weight, steerer.maps_[site].weight) and torch.equal(m.bias, steerer.maps_[site].bias)
    assert set(steerer.prompt_gate(["the cat", "you idiot"]).tolist()) <= {0.0, 1.0}


def test_save_load_round_trip(shared, tmp_path):
    model, fit, _ = shared
    steerer = fit["hard"]
    steerer.save(tmp_path / "g")
    meta = json.loads((tmp_path / "g" / "steerer.json").read_text())
    assert meta["format_version"] >= 4 and meta["gate"]["options"]["shared"] and meta["gate"]["options"]["hard"]
    again = HookedSteerer.load(tmp_path / "g", model)
    prompts = ["the cat", "you are a stupid idiot and"]
    assert torch.equal(again.prompt_gate(prompts), steerer.prompt_gate(prompts))
    kw = dict(max_new_tokens=4, return_type="tokens")
    assert torch.equal(steerer.generate(prompts, 1.0, **kw), again.generate(prompts, 1.0, **kw))


def test_perplexity_reads_each_rows_gate(shared):
    """Reference-text perplexity runs the shared gate's pass per batch: batched equals one by one."""
    from lineas_tl.evaluate.perplexity import perplexity

    model, fit, _ = shared
    steerer = fit["soft"]
    texts = ["the weather today is warm and the sun is out", "you are a stupid idiot"]
    together = perplexity(model, texts, 2, steerer, 1.0)
    assert math.isclose(together, perplexity(model, texts, 1, steerer, 1.0), rel_tol=1e-5)
    assert not math.isclose(together, perplexity(model, texts, 2), rel_tol=1e-6)


def test_calibrating_on_text_the_gate_shuts_warns(shared):
    """A hard shared gate leaves neutral text untouched, so its perplexity cannot pick a strength."""
    _, fit, _ = shared
    steerer = fit["hard"]
    shut = [t for t, g in zip(CONTROL[:8], steerer.prompt_gate(CONTROL[:8]).tolist()) if g == 0.0]
    assert shut, "the fixture should shut some control prompts"
    with pytest.warns(UserWarning, match="the gate stayed shut"):
        steerer.calibrate(shut, 0.05, grid=2, bisect_steps=0)
    assert steerer.calibrated_strength_ == 1.0
