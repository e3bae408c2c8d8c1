"""The baselines (Mean-AcT, ActAdd, ITI-c) and Linear-AcT, each checked against an independent
computation of what it should fit, on tiny models built offline."""

from __future__ import annotations

import numpy as np
import ot
import pytest
import torch

from lineas_tl import HookedSteerer, collect_activations
from lineas_tl.methods import METHODS
from lineas_tl.methods.actadd import DEFAULT_COEFFICIENT

N_FIT = 32


def fit_sets(text_sets: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    return text_sets["source"][:N_FIT], text_sets["target"][:N_FIT]


def test_registry_has_every_method() -> None:
    assert {"lineas", "linear_act", "mean_act", "actadd", "iti"} <= set(METHODS)


# ------------------------------------------------------------------------------------ Mean-AcT
def test_mean_act_shift_is_mean_difference(hf_model, text_sets) -> None:
    source, target = fit_sets(text_sets)
    steerer = HookedSteerer(hf_model).fit(source, target, method="mean_act", progress=False)
    u = collect_activations(hf_model, source, steerer.sites, progress=False)
    v = collect_activations(hf_model, target, steerer.sites, progress=False)
    assert list(steerer.maps_) == steerer.sites
    for site, m in steerer.maps_.items():
        assert m.kind == "shift" and not m.weight.requires_grad
        torch.testing.assert_close(m.weight, torch.ones_like(m.weight))
        torch.testing.assert_close(m.bias, v[site].mean(0) - u[site].mean(0), atol=1e-5, rtol=1e-5)


def test_mean_act_sequential_matches_the_target_mean_at_every_site(native_model) -> None:
    g = torch.Generator().manual_seed(0)
    source = [torch.randint(0, 50, (int(n),), generator=g).tolist() for n in torch.randint(3, 9, (16,), generator=g)]
    target = [torch.randint(50, 100, (int(n),), generator=g).tolist() for n in torch.randint(3, 9, (16,), generator=g)]
    steerer = HookedSteerer(native_model).fit(source, target, method="mean_act", sequential=True, progress=False)
    steered = collect_activations(native_model, source, steerer.sites, maps=steerer.maps_, progress=False)
    v = collect_activations(native_model, target, steerer.sites, progress=False)
    for site in steerer.sites:
        torch.testing.assert_close(steered[site].mean(0), v[site].mean(0), atol=1e-4, rtol=1e-4)
    # Without sequential estimation only the first site is matched exactly (downstream sites also
    # receive the upstream shifts): the two estimates differ after the first site.
    plain = HookedSteerer(native_model).fit(source, target, method="mean_act", progress=False)
    first, last = steerer.sites[0], steerer.sites[-1]
    torch.testing.assert_close(plain.maps_[first].bias, steerer.maps_[first].bias)
    assert not torch.allclose(plain.maps_[last].bias, steerer.maps_[last].bias, atol=1e-5)


# -------------------------------------------------------------------------------------- ActAdd
def test_actadd_vector_is_the_activation_difference_of_its_pair(gpt2_model, text_sets) -> None:
    source, target = fit_sets(text_sets)
    steerer = HookedSteerer(gpt2_model).fit(source, target, method="actadd", progress=False)
    layer = gpt2_model.cfg.n_layers // 2
    site = gpt2_model.hook_dict[f"blocks.{layer}.hook_resid_pre"].name
    assert list(steerer.maps_) == [site]
    assert steerer.history_["prompt_plus"] == target[0] and steerer.history_["prompt_minus"] == source[0]

    def resid(text: str, first: int) -> torch.Tensor:
        tokens = gpt2_model.to_tokens(text)
        assert tokens[0, 0] == gpt2_model.tokenizer.bos_token_id
        _, cache = gpt2_model.run_with_cache(tokens)
        return cache[f"blocks.{layer}.hook_resid_pre"][0, first:].mean(0)

    m = steerer.maps_[site]
    assert m.kind == "shift"
    # mean over the prompt's tokens after BOS (BOS is shared by both prompts)
    torch.testing.assert_close(m.bias, resid(target[0], 1) - resid(source[0], 1), atol=1e-5, rtol=1e-5)
    with_bos = HookedSteerer(gpt2_model, pool_bos=True).fit(source, target, method="actadd", progress=False)
    expected = resid(target[0], 0) - resid(source[0], 0)
    torch.testing.assert_close(with_bos.maps_[site].bias, expected, atol=1e-5, rtol=1e-5)

    # Explicit pair and layer; the strength is the coefficient: c * b is added at every position.
    plus, minus = "have a lovely day", "you stupid idiot"
    explicit = HookedSteerer(gpt2_model).fit(
        source, target, method="actadd", prompt_plus=plus, prompt_minus=minus, layer=0, progress=False
    )
    b = explicit.maps_[gpt2_model.hook_dict["blocks.0.hook_resid_pre"].name].bias
    _, c_plus = gpt2_model.run_with_cache(gpt2_model.to_tokens(plus))
    _, c_minus = gpt2_model.run_with_cache(gpt2_model.to_tokens(minus))
    expected = c_plus["blocks.0.hook_resid_pre"][0, 1:].mean(0) - c_minus["blocks.0.hook_resid_pre"][0, 1:].mean(0)
    torch.testing.assert_close(b, expected, atol=1e-5, rtol=1e-5)
    tokens = gpt2_model.to_tokens("the cat sat")
    seen = {}

    def read(act, hook):
        seen["x"] = act.clone()

    # the steered residual at the hooked site is exactly z + c * b
    with gpt2_model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", read)]):
        gpt2_model(tokens)
    plain = seen["x"]
    with explicit.steer(strength=DEFAULT_COEFFICIENT):
        with gpt2_model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", read)]):
            gpt2_model(tokens)
    torch.testing.assert_close(seen["x"], plain + DEFAULT_COEFFICIENT * b, atol=1e-5, rtol=1e-5)


def test_actadd_rejects_bad_arguments(gpt2_model, text_sets) -> None:
    source, target = fit_sets(text_sets)
    steerer = HookedSteerer(gpt2_model)
    with pytest.raises(ValueError, match="both"):
        steerer.fit(source, target, method="actadd", prompt_plus="hi", progress=False)
    with pytest.raises(ValueError, match="out of range"):
        steerer.fit(source, target, method="actadd", layer=99, progress=False)
    with pytest.raises(ValueError, match="not both"):
        steerer.fit(source, target, method="actadd", layer=0, site="blocks.0.hook_resid_pre", progress=False)


# ----------------------------------------------------------------------------------------- ITI
PLANTED = [(2, 1), (2, 3)]  # (layer, head): last block, so no other head sees the signal


def _random_prompts(n: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 100, (int(k),), generator=g).tolist() for k in torch.randint(4, 10, (n,), generator=g)]


def test_iti_selects_the_heads_a_planted_signal_lives_in(native_model) -> None:
    # Source and target prompts come from the same distribution; a hook adds a constant vector to
    # the planted heads' hook_z for source prompts only (recognised by their token ids).
    source, target = _random_prompts(32, seed=1), _random_prompts(32, seed=2)
    source_keys = {tuple(s) for s in source}
    delta = torch.linspace(-1.0, 1.0, 8) * 2.0
    is_source: dict[str, torch.Tensor] = {}

    def read_batch(module, args, kwargs):
        tokens, mask = args[0], kwargs["attention_mask"]
        rows = [tuple(t[m.bool()].tolist()) for t, m in zip(tokens, mask, strict=True)]
        is_source["rows"] = torch.tensor([r in source_keys for r in rows])

    def plant(head: int):
        def hook(act, hook):
            act = act.clone()
            act[is_source["rows"], :, head] += delta
            return act

        return hook

    handle = native_model.register_forward_pre_hook(read_batch, with_kwargs=True)
    planted = [(f"blocks.{layer}.attn.hook_z", plant(head)) for layer, head in PLANTED]
    try:
        with native_model.hooks(fwd_hooks=planted):
            steerer = HookedSteerer(native_model).fit(source, target, method="iti", k=2, progress=False)
    finally:
        handle.remove()

    h = steerer.history_
    assert sorted(map(tuple, h["heads"])) == PLANTED
    acc = np.array(h["val_accuracy"])
    assert all(acc[layer, head] == 1.0 for layer, head in PLANTED)
    others = np.ones_like(acc, dtype=bool)
    for layer, head in PLANTED:
        others[layer, head] = False
    assert acc[others].max() < 1.0  # chance-level probes elsewhere

    site = native_model.hook_dict["blocks.2.attn.hook_z"].name
    assert site == "blocks.2.attn.o.hook_in"  # before the output projection W_O
    assert list(steerer.maps_) == [site]
    m = steerer.maps_[site]
    assert m.kind == "shift" and m.feature_shape == (4, 8)
    moved = m.bias.norm(dim=-1) > 0
    assert moved.tolist() == [head in (1, 3) for head in range(4)]
    for (_, head), sigma in zip(h["heads"], h["sigma"], strict=True):
        shift = m.bias[head]
        assert shift.norm().item() == pytest.approx(15.0 * sigma, rel=1e-5)  # alpha * sigma * unit
        # steering moves source towards target: against the planted direction
        assert torch.dot(shift, delta).item() < 0


def test_iti_direction_and_sigma_match_a_probe_refit(gpt2_model, text_sets) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    source, target = fit_sets(text_sets)
    steerer = HookedSteerer(gpt2_model).fit(source, target, method="iti", k=3, alpha=2.0, progress=False)
    sites = steerer.history_["sites"]
    u = collect_activations(gpt2_model, source, sites, progress=False)
    v = collect_activations(gpt2_model, target, sites, progress=False)
    y = np.r_[np.zeros(len(source)), np.ones(len(target))]
    train, _ = train_test_split(np.arange(len(y)), test_size=0.2, stratify=y, random_state=0)
    layer, head = steerer.history_["heads"][0]
    site = gpt2_model.hook_dict[f"blocks.{layer}.attn.hook_z"].name
    x = torch.cat([u[site], v[site]])[:, head].double().numpy()
    w = LogisticRegression(max_iter=1000).fit(x[train], y[train]).coef_[0]
    theta = w / np.linalg.norm(w)
    expected = 2.0 * np.std(x @ theta) * theta
    np.testing.assert_allclose(steerer.maps_[site].bias[head].numpy(), expected, atol=1e-4, rtol=1e-3)
    assert sum(int((m.bias.norm(dim=-1) > 0).sum()) for m in steerer.maps_.values()) == 3


def test_iti_rejects_bad_arguments(gpt2_model, text_sets) -> None:
    source, target = fit_sets(text_sets)
    with pytest.raises(ValueError, match="k must"):
        HookedSteerer(gpt2_model).fit(source, target, method="iti", k=0, progress=False)
    with pytest.raises(ValueError, match="at least 2"):
        HookedSteerer(gpt2_model).fit(source[:1], target, method="iti", progress=False)
    tiny = HookedSteerer(gpt2_model).fit(source[:2], target[:2], method="iti", k=1, progress=False)
    assert len(tiny.history_["heads"]) == 1  # 2 + 2 prompts: one held out per class


# ---------------------------------------------------------------------------------- Linear-AcT
def _numpy_ot_fit(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least squares v_(i) ~ w u_(i) + b on sorted columns, with numpy's polyfit."""
    us, vs = np.sort(u, axis=0), np.sort(v, axis=0)
    fits = [np.polyfit(us[:, j], vs[:, j], 1) for j in range(u.shape[1])]
    return np.array([f[0] for f in fits]), np.array([f[1] for f in fits])


def _pot_ot_fit(u: np.ndarray, v: np.ndarray) -> tuple[float, float]:
    """Least squares weighted by POT's exact 1-D transport plan between u and v (one column)."""
    plan = ot.emd_1d(u, v)
    i, j = np.nonzero(plan)
    wts = plan[i, j]
    a = np.stack([u[i], np.ones_like(u[i])], 1) * np.sqrt(wts)[:, None]
    sol = np.linalg.lstsq(a, v[j] * np.sqrt(wts), rcond=None)[0]
    return float(sol[0]), float(sol[1])


@pytest.mark.parametrize("sequential", [False, True])
def test_linear_act_is_the_closed_form_1d_ot_solution(gpt2_model, text_sets, sequential: bool) -> None:
    source, target = fit_sets(text_sets)
    steerer = HookedSteerer(gpt2_model).fit(
        source, target, method="linear_act", sequential=sequential, collect_batch_size=N_FIT, progress=False
    )
    v = collect_activations(gpt2_model, target, steerer.sites, batch_size=N_FIT, progress=False)
    for i, site in enumerate(steerer.sites):
        upstream = {s: steerer.maps_[s] for s in steerer.sites[:i]} if sequential else None
        u = collect_activations(gpt2_model, source, [site], maps=upstream, batch_size=N_FIT, progress=False)[site]
        un, vn = u.double().numpy(), v[site].double().numpy()
        w, b = _numpy_ot_fit(un, vn)
        m = steerer.maps_[site]
        np.testing.assert_allclose(m.weight.numpy(), w, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(m.bias.numpy(), b, atol=1e-4, rtol=1e-4)
        for j in (0, un.shape[1] // 2):
            wp, bp = _pot_ot_fit(un[:, j], vn[:, j])
            assert m.weight[j].item() == pytest.approx(wp, abs=1e-4, rel=1e-4)
            assert m.bias[j].item() == pytest.approx(bp, abs=1e-4, rel=1e-4)


# ----------------------------------------------- every method: the same object steer/save accept
@pytest.mark.parametrize("method", ["mean_act", "actadd", "iti"])
def test_baselines_steer_generate_and_round_trip(llama_model, text_sets, tmp_path, method: str) -> None:
    source, target = fit_sets(text_sets)
    steerer = HookedSteerer(llama_model).fit(source, target, method=method, progress=False)
    tokens = llama_model.to_tokens("the cat sat on the mat")
    with torch.no_grad():
        base = llama_model(tokens)
        with steerer.steer(strength=0.0):
            torch.testing.assert_close(llama_model(tokens), base, atol=0, rtol=0)
        with steerer.steer(strength=1.0):
            steered = llama_model(tokens)
    assert not torch.allclose(steered, base)
    text = steerer.generate("the cat", strength=1.0, max_new_tokens=4, return_type="continuation")
    assert isinstance(text, str)
    steerer.save(tmp_path / "s")
    loaded = HookedSteerer.load(tmp_path / "s", llama_model)
    assert loaded.method_ == method and list(loaded.maps_) == list(steerer.maps_)
    for site, m in steerer.maps_.items():
        torch.testing.assert_close(loaded.maps_[site].bias, m.bias, atol=0, rtol=0)
        assert loaded.maps_[site].kind == "shift"
    with torch.no_grad(), loaded.steer(strength=1.0):
        torch.testing.assert_close(llama_model(tokens), steered)
