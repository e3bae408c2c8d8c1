"""The gate (DSAS): its arithmetic pinned by hand, the probe against scikit-learn, exactness with and
without the KV cache and with left padding, end-to-end LinEAS, save/load, and fold/export refusal."""

import json
import math

import pytest
import torch

from lineas_tl import HookedSteerer
from lineas_tl.gate import GateOptions, GateState, GatedSteeringHook, SiteProbe, fit_probe
from lineas_tl.hooks import GenerationPositions, SteeringHook
from lineas_tl.maps import AffineMap
from lineas_tl.validate import SteeringInputError


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def toy_hook(driver: str, pool_mask=None, tracker=None, strength=0.5):
    """A 2-feature site; probe logit 2*z0 - 1; map omega = (2, 1), b = (0, 1): T(z) - z = (z0, 1)."""
    probe = SiteProbe(torch.zeros(2), torch.tensor([[1.0], [0.0]]), torch.ones(1), torch.tensor([2.0]), torch.tensor(-1.0))
    m = AffineMap((2,))
    with torch.no_grad():
        m.weight.copy_(torch.tensor([2.0, 1.0]))
        m.bias.copy_(torch.tensor([0.0, 1.0]))
    state = GateState(tracker, pool_mask, record={})
    return GatedSteeringHook("s", SteeringHook(m, strength, tracker=tracker), probe, driver, state), state


ACT = torch.tensor([[[0.0, 3.0], [0.5, 3.0], [1.0, 3.0]]])  # logits -1, 0, 1


@pytest.mark.parametrize(
    ("driver", "mask", "gates"),
    [
        ("token", None, [sig(-1), 0.5, sig(1)]),
        ("running", None, [sig(-1), sig(-0.5), 0.5]),
        ("prompt", None, [0.5, 0.5, 0.5]),
        ("token", [0, 1, 1], [0.0, 0.5, sig(1)]),  # an uncounted token (BOS, padding) is never steered
        ("running", [0, 1, 1], [0.0, 0.5, sig(0.5)]),
        ("prompt", [0, 1, 1], [0.0, sig(0.5), sig(0.5)]),
    ],
)
def test_gate_arithmetic_by_hand(driver, mask, gates):
    pool_mask = None if mask is None else torch.tensor([mask])
    hook, state = toy_hook(driver, pool_mask)
    out = hook(ACT.clone(), hook=None)
    g = torch.tensor(gates)
    assert torch.allclose(state.record["s"][0], g, atol=1e-6)
    # z + lambda * g * (T(z) - z), lambda = 0.5, T(z) - z = (z0, 1)
    expected = ACT[0] + 0.5 * g[:, None] * torch.stack([ACT[0, :, 0], torch.ones(3)], 1)
    assert torch.allclose(out[0], expected, atol=1e-6)


def test_inactive_site_and_zero_strength_leave_the_activation_bit_identical():
    hook, _ = toy_hook("token")
    hook.probe.active = False
    assert hook(ACT, hook=None) is ACT
    hook, _ = toy_hook("token", strength=0.0)
    assert hook(ACT, hook=None) is ACT


@pytest.mark.parametrize("driver", ["token", "running", "prompt"])
def test_cached_state_matches_recomputing(driver):
    """Calls of one new position (KV cache) continue the state exactly where a full call would be."""
    torch.manual_seed(0)
    seq = torch.randn(2, 6, 2)
    pad = torch.tensor([1, 0])  # row 0 is left-padded by one
    full_tracker = GenerationPositions(prompt_len=4, left_pad=pad)
    cached_tracker = GenerationPositions(prompt_len=4, left_pad=pad)
    mask = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]])  # padding and BOS not counted
    full, full_state = toy_hook(driver, mask, full_tracker)
    cached, cached_state = toy_hook(driver, mask, cached_tracker)
    outs = []
    for k in range(3):  # prompt, then two new tokens
        full_tracker.on_forward()
        cached_tracker.on_forward()
        whole = full(seq[:, : 4 + k], hook=None)
        part = cached(seq[:, : 4 + k] if k == 0 else seq[:, 3 + k : 4 + k], hook=None)
        assert torch.allclose(whole[:, -part.shape[1] :], part, atol=1e-6), (driver, k)
        assert torch.allclose(full_state.record["s"][:, -part.shape[1] :], cached_state.record["s"], atol=1e-6)
        outs.append(part)


def test_probe_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression

    torch.manual_seed(1)
    src, ctl = torch.randn(30, 10) + 0.8, torch.randn(30, 10)
    probe = fit_probe(src, ctl, n_components=3, holdout=0.2)
    x = torch.cat([src, ctl])
    z = ((x - probe.mean) @ probe.components / probe.scale).numpy()
    y = [1] * 30 + [0] * 30
    ref = LogisticRegression(C=1.0, tol=1e-10, max_iter=1000).fit(z, y)
    assert torch.allclose(probe.weight, torch.tensor(ref.coef_[0], dtype=torch.float32), atol=1e-4)
    assert abs(float(probe.bias.detach()) - float(ref.intercept_[0])) < 1e-4
    assert 0.5 < probe.accuracy <= 1.0 and probe.active == (probe.accuracy >= 0.75)
    # the logit is affine: the logit of a mean is the mean of the logits
    assert torch.allclose(probe.logit(x.mean(0)), probe.logit(x).mean(), atol=1e-5)


def test_folded_logit_equals_the_unfolded_probe_and_follows_its_weights():
    """The hooks read the probe through one folded direction (logit = x.d + e), cached per probe."""
    torch.manual_seed(2)
    probe = fit_probe(torch.randn(20, 12) + 0.5, torch.randn(20, 12), n_components=4).requires_grad_(False)
    x = torch.randn(3, 5, 12)
    d, e = probe.folded(x.device)
    assert torch.allclose(x @ d + e, probe.unfolded_logit(x), atol=1e-5)
    assert probe.folded(x.device)[0] is d  # cached
    with torch.no_grad():
        probe.weight.mul_(2.0)  # trained or loaded in place: the cache follows
    d2, e2 = probe.folded(x.device)
    assert torch.allclose(x @ d2 + e2, probe.unfolded_logit(x), atol=1e-5) and not torch.allclose(d, d2)
    probe.requires_grad_(True)  # while training, the direction carries the gradient
    d3, _ = probe.folded(x.device)
    assert d3.requires_grad


def test_inactive_gated_site_is_not_attached():
    hook, _ = toy_hook("prompt")
    assert not hook.skips
    hook.probe.active = False
    assert hook.skips


def test_bad_gate_arguments(gpt2_model, text_sets):
    steerer = HookedSteerer(gpt2_model)
    src, tgt = text_sets["source"][:8], text_sets["target"][:8]
    with pytest.raises(SteeringInputError, match="control"):
        steerer.fit(src, tgt, method="mean_act", gate=True, progress=False)
    with pytest.raises(SteeringInputError, match="driver"):
        steerer.fit(src, tgt, method="mean_act", control=tgt, gate={"driver": "psychic"}, progress=False)
    with pytest.raises(SteeringInputError, match="threshold"):
        GateOptions(threshold=1.5)


# --------------------------------------------------------------------------- on a model
CONTROL = ["the weather today is warm", "a train left the station", "the museum opened at nine",
           "she read a book in the park", "the river runs to the sea", "the shop sells bread and milk",
           "we walked along the old road", "the bridge crosses the bay"] * 2  # fmt: skip


@pytest.fixture(scope="module")
def gated(gpt2_dir, tmp_path_factory):
    from conftest import SOURCE_WORDS, TARGET_WORDS, boot, make_prompts

    model = boot(gpt2_dir)
    src, tgt = make_prompts(SOURCE_WORDS, 16, seed=1), make_prompts(TARGET_WORDS, 16, seed=2)
    fitted = {}
    for driver in ("token", "running", "prompt"):
        fitted[driver] = HookedSteerer(model).fit(
            src, tgt, method="mean_act", control=CONTROL, gate={"driver": driver, "threshold": 0.0}, progress=False
        )
    return model, fitted, (src, tgt)


@pytest.mark.parametrize("method", ["linear_act", "caa", "iti", "actadd"])
def test_every_baseline_takes_a_gate(gated, method):
    """Two stages for the baselines: their maps, then a probe at each of their own sites."""
    model, _, (src, tgt) = gated
    steerer = HookedSteerer(model).fit(src, tgt, method=method, control=CONTROL, gate={"threshold": 0.0}, progress=False)
    trace = steerer.gates("you are a stupid idiot")
    assert set(trace.values) == set(steerer.maps_) == set(steerer.history_["gate"]["accuracy"])
    assert float(trace.matrix().min()) >= 0 and float(trace.matrix().max()) <= 1
    tokens = model.to_tokens("you are a stupid idiot")
    plain = model(tokens)
    with steerer.steer(1.0):
        assert not torch.allclose(model(tokens), plain)


@pytest.mark.parametrize("driver", ["token", "running", "prompt"])
def test_gated_generation_exact_with_and_without_kv_cache_and_padding(gated, driver):
    model, fitted, _ = gated
    steerer = fitted[driver]
    prompts = ["the cat", "you are a stupid idiot and", "have a"]
    kw = dict(max_new_tokens=5, return_type="tokens")
    cached = steerer.generate(prompts, 1.0, **kw)
    uncached = steerer.generate(prompts, 1.0, use_past_kv_cache=False, **kw)
    assert torch.equal(cached, uncached)
    batched = steerer.generate(prompts, 1.0, max_new_tokens=5, return_type="continuation")
    alone = [steerer.generate(p, 1.0, max_new_tokens=5, return_type="continuation") for p in prompts]
    assert batched == alone
    # the gate changes something: gated logits differ from the ungated maps' and from the model's
    tokens = model.to_tokens("you are a stupid idiot")
    with steerer.steer(1.0):
        gated_logits = model(tokens)
    plain = model(tokens)
    assert not torch.allclose(gated_logits, plain)


def test_gates_trace_and_summary(gated):
    _, fitted, _ = gated
    steerer = fitted["running"]
    trace = steerer.gates("you are a stupid idiot")
    assert len(trace.tokens) == trace.matrix().shape[1]
    assert set(trace.values) == set(steerer.maps_)
    assert float(trace.matrix().min()) >= 0 and float(trace.matrix().max()) <= 1
    h = steerer.history_["gate"]
    assert set(h["accuracy"]) == set(steerer.maps_) and h["driver"] == "running"
    assert "gate (running)" in repr(steerer)


def test_save_load_round_trip_and_old_format(gated, tmp_path):
    model, fitted, _ = gated
    steerer = fitted["prompt"]
    steerer.save(tmp_path / "g")
    meta = json.loads((tmp_path / "g" / "steerer.json").read_text())
    assert meta["format_version"] >= 3 and meta["gate"]["options"]["driver"] == "prompt"
    again = HookedSteerer.load(tmp_path / "g", model)
    for site, p in steerer.gate_.probes.items():
        q = again.gate_.probes[site]
        assert torch.equal(p.weight, q.weight) and torch.equal(p.components, q.components)
        assert p.accuracy == q.accuracy and p.active == q.active
    prompts = ["the cat", "you are a stupid idiot and"]
    assert torch.equal(
        steerer.generate(prompts, 1.0, max_new_tokens=4, return_type="tokens"),
        again.generate(prompts, 1.0, max_new_tokens=4, return_type="tokens"),
    )
    # a steerer saved before gates (format 2, no "gate" entry) loads ungated
    plain = HookedSteerer(model).fit(*gated[2], method="mean_act", progress=False)
    plain.save(tmp_path / "old")
    meta_file = tmp_path / "old" / "steerer.json"
    meta = json.loads(meta_file.read_text())
    meta.pop("gate")
    meta["format_version"] = 2
    meta_file.write_text(json.dumps(meta))
    assert HookedSteerer.load(tmp_path / "old", model).gate_ is None


def test_fold_and_export_refuse_a_gated_steerer(gated, tmp_path):
    from lineas_tl.fold import FoldError

    model, fitted, _ = gated
    steerer = fitted["token"]
    with pytest.raises(FoldError, match="gated"):
        steerer.fold()
    for fmt in ("hf", "gguf", "control-vector"):
        with pytest.raises(FoldError, match="ungated=True"):
            steerer.export(tmp_path / f"x-{fmt}", format=fmt)
    tokens = model.to_tokens("the cat sat")
    with steerer.steer(1.0):
        pass
    ungated = HookedSteerer(model)
    ungated.maps_ = steerer.maps_
    with model.hooks(fwd_hooks=[(s, SteeringHook(m)) for s, m in steerer.maps_.items()]):
        expected = model(tokens)
    with steerer.fold(ungated=True):
        got = model(tokens)
    assert torch.allclose(got, expected, atol=1e-4)
    assert steerer.gate_ is not None  # the steerer keeps its gate
