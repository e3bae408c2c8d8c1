"""ActAdd: a matched pair's per-position difference at the prompt's front, layer and coefficient swept."""

from __future__ import annotations

import pytest
import torch
from toy_model import EMBED, SOURCE, TARGET, Toy

from lineas_tl import HookedSteerer
from lineas_tl.methods.actadd import SWEEP_COEFFICIENTS, sweep_layers


def test_hand_computed_vector_and_sweep_on_the_toy_model() -> None:
    steerer = HookedSteerer(Toy(), sites=["hook1", "hook2"]).fit(
        SOURCE, TARGET, method="actadd", site="hook1", prompt_plus=[3, 4], prompt_minus=[0, 1],
        coefficients=(1.0, 2.0, 4.0), progress=False,
    )
    h = steerer.history_
    m = steerer.maps_["hook1"]
    assert (m.kind, m.n_front, h["site"], h["coefficient"]) == ("front", 2, "hook1", 2.0)
    # rows: E[3] - E[0] = (1, -10) and E[4] - E[1] = (2, -29), times the chosen c = 2
    torch.testing.assert_close(m.bias, 2 * torch.stack([EMBED[3] - EMBED[0], EMBED[4] - EMBED[1]]))
    # Sweep objective on the read-out (hook2 = 2 * hook1): one-token source prompts get row 0, so the
    # steered source mean is 2 * ((2, 20) + c (1, -10)); target mean (8, 2), std (4, 2):
    # J(c) = (((2c - 4) / 4)^2 + ((38 - 20c) / 2)^2) / 2
    expected = {c: (((2 * c - 4) / 4) ** 2 + ((38 - 20 * c) / 2) ** 2) / 2 for c in (1.0, 2.0, 4.0)}
    got = {c: j for _, c, j in h["objective"]["candidates"]}
    assert got == pytest.approx(expected)
    assert h["objective"]["unsteered"] == pytest.approx((1 + 19**2) / 2)
    # the map adds row t at position t only
    z = torch.zeros(1, 3, 2)
    torch.testing.assert_close(m(z)[0, 2], torch.zeros(2))
    torch.testing.assert_close(m(z, 0.5)[0, :2], torch.stack([EMBED[3] - EMBED[0], EMBED[4] - EMBED[1]]))


def test_pair_of_unequal_length_is_padded_with_spaces(gpt2_model, text_sets) -> None:
    plus, minus = "lovely", "you stupid idiot"
    steerer = HookedSteerer(gpt2_model).fit(
        text_sets["source"][:8], text_sets["target"][:8], method="actadd",
        prompt_plus=plus, prompt_minus=minus, layer=1, coefficient=3.0, progress=False,
    )
    h = steerer.history_
    space = gpt2_model.tokenizer.encode(" ", add_special_tokens=False)[0]
    p, n = gpt2_model.to_tokens(plus)[0].tolist(), gpt2_model.to_tokens(minus)[0].tolist()
    assert len(p) < len(n)
    assert h["prompt_plus"] == p + [space] * (len(n) - len(p)) and h["prompt_minus"] == n
    site = gpt2_model.hook_dict["blocks.1.hook_resid_pre"].name
    _, cp = gpt2_model.run_with_cache(torch.tensor([h["prompt_plus"]]))
    _, cm = gpt2_model.run_with_cache(torch.tensor([n]))
    diff = cp["blocks.1.hook_resid_pre"][0] - cm["blocks.1.hook_resid_pre"][0]
    m = steerer.maps_[site]
    torch.testing.assert_close(m.bias, 3.0 * diff, atol=1e-5, rtol=1e-5)
    assert m.bias[0].abs().max() < 1e-5  # the shared BOS: its row is zero
    assert h["objective"] == {}  # layer and coefficient given: no sweep


def test_default_sweep_reads_only_the_fit_prompts(gpt2_model, text_sets) -> None:
    source, target = text_sets["source"][:8], text_sets["target"][:8]
    steerer = HookedSteerer(gpt2_model).fit(source, target, method="actadd", progress=False)
    h = steerer.history_
    assert sweep_layers(3) == [0, 1, 2] and sweep_layers(30) == [4, 8, 15, 22]
    cands = h["objective"]["candidates"]
    assert len(cands) == 3 * len(SWEEP_COEFFICIENTS)
    best = min(cands, key=lambda r: r[2])
    assert [h["layer"], h["coefficient"]] == best[:2]
    i, j = h["pair_from"]
    plus, minus = gpt2_model.to_tokens(target[i])[0].tolist(), gpt2_model.to_tokens(source[j])[0].tolist()
    assert h["prompt_plus"][: len(plus)] == plus and h["prompt_minus"][: len(minus)] == minus


def test_default_pair_is_the_closest_fit_pair() -> None:
    # no tokenizer: only equal lengths compare. target [3, 1] vs source [0, 1] differ at one position
    # (the first such pair); [3, 4] differs from both two-token sources at two; [5] vs [1] ties at one.
    source, target = [[0, 1], [2, 1], [1]], [[3, 4], [3, 1], [5]]
    steerer = HookedSteerer(Toy(), sites=["hook1", "hook2"]).fit(
        source, target, method="actadd", site="hook1", coefficient=1.0, progress=False
    )
    h = steerer.history_
    assert h["pair_from"] == [1, 0] and h["prompt_plus"] == [3, 1] and h["prompt_minus"] == [0, 1]
    torch.testing.assert_close(steerer.maps_["hook1"].bias, torch.stack([EMBED[3] - EMBED[0], torch.zeros(2)]))


def test_front_positions_with_cache_and_left_padding(gpt2_model, text_sets) -> None:
    steerer = HookedSteerer(gpt2_model).fit(
        text_sets["source"][:8], text_sets["target"][:8], method="actadd",
        prompt_plus="have a lovely day", prompt_minus="you are a moron", layer=1, coefficient=4.0, progress=False,
    )
    site = steerer.history_["site"]
    n_front = steerer.maps_[site].n_front
    # the steered residual differs from the plain one at the first n_front positions only
    tokens = gpt2_model.to_tokens("the cat sat on the mat with a dog")
    assert tokens.shape[1] > n_front
    _, plain = gpt2_model.run_with_cache(tokens, names_filter=[site])
    seen = {}
    with steerer.steer(1.0), gpt2_model.hooks(fwd_hooks=[(site, lambda a, hook: seen.update(x=a.clone()))]):
        gpt2_model(tokens)
    delta = seen["x"] - plain[site]
    torch.testing.assert_close(delta[0, :n_front], steerer.maps_[site].bias, atol=1e-5, rtol=1e-5)
    assert delta[0, n_front:].abs().max() == 0
    # generation: the same tokens with and without the KV cache, and batched (left-padded) vs alone
    prompts = ["the cat", "a dog ran in the park"]
    kw = {"strength": 1.0, "max_new_tokens": 6, "return_type": "tokens", "stop_at_eos": False}
    alone = [steerer.generate(p, **kw)[0] for p in prompts]
    nocache = [steerer.generate(p, use_past_kv_cache=False, **kw)[0] for p in prompts]
    batched = steerer.generate(prompts, **kw)
    for a, b in zip(alone, nocache):
        assert torch.equal(a, b)
    for a, row in zip(alone, batched):
        assert torch.equal(a, row[-len(a):])
    plain_gen = steerer.generate(prompts[1], **{**kw, "strength": 0.0})[0]
    assert not torch.equal(plain_gen, alone[1])


def test_actadd_rejects_bad_arguments(gpt2_model, text_sets) -> None:
    source, target = text_sets["source"][:8], text_sets["target"][:8]
    steerer = HookedSteerer(gpt2_model)
    with pytest.raises(ValueError, match="both"):
        steerer.fit(source, target, method="actadd", prompt_plus="hi", progress=False)
    with pytest.raises(ValueError, match="out of range"):
        steerer.fit(source, target, method="actadd", layer=99, progress=False)
    with pytest.raises(ValueError, match="not both"):
        steerer.fit(source, target, method="actadd", layer=0, site="blocks.0.hook_resid_pre", progress=False)
    with pytest.raises(ValueError, match="positive"):
        steerer.fit(source, target, method="actadd", layer=0, coefficient=-1.0, progress=False)
    with pytest.raises(ValueError, match="same token length"):
        HookedSteerer(Toy(), sites=["hook1"]).fit(
            SOURCE, TARGET, method="actadd", site="hook1", prompt_plus=[3], prompt_minus=[0, 1], progress=False
        )
