"""ITI-c: probes per head, the top K heads shifted along their probe's normal."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lineas_tl import HookedSteerer, collect_activations
from lineas_tl.methods.iti import DEFAULT_ALPHA, default_k
from planted import planted_heads, random_prompts

N_FIT = 32


def fit_sets(text_sets: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    return text_sets["source"][:N_FIT], text_sets["target"][:N_FIT]


def test_default_k_is_itis_share_of_the_heads(gpt2_model, text_sets) -> None:
    # ITI: 48 of LLaMA-7B's 32 x 32 = 1024 heads. SmolLM2-135M: 30 x 9 = 270 heads -> 270 * 48/1024 = 12.7
    assert default_k(1024) == 48 and default_k(270) == 13 and default_k(12) == 1 and default_k(1) == 1
    assert DEFAULT_ALPHA == 15.0
    source, target = fit_sets(text_sets)
    steerer = HookedSteerer(gpt2_model).fit(source, target, method="iti", progress=False)
    assert steerer.history_["k"] == default_k(3 * 4) == 1  # 3 blocks x 4 heads


PLANTED = [(2, 1), (2, 3)]  # (layer, head): last block, so no other head sees the signal


def test_iti_selects_the_heads_a_planted_signal_lives_in(native_model) -> None:
    source, target = random_prompts(32, seed=1), random_prompts(32, seed=2)
    delta = torch.linspace(-1.0, 1.0, 8) * 2.0
    with planted_heads(native_model, source, PLANTED, delta):
        steerer = HookedSteerer(native_model).fit(source, target, method="iti", k=2, progress=False)

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


def test_head_masks_mark_exactly_the_given_heads(native_model) -> None:
    from lineas_tl.methods.iti import head_masks, z_sites

    n_heads, d_head = native_model.cfg.n_heads, native_model.cfg.d_head
    masks = head_masks(native_model, [[2, 1], [0, n_heads - 1], [2, 0]])
    assert list(masks) == z_sites(native_model, [0, 2])  # canonical names, one per block holding a head
    expected = {0: {n_heads - 1}, 2: {0, 1}}
    for wanted, mask in zip(expected.values(), masks.values()):
        assert mask.shape == (n_heads, d_head) and mask.dtype == torch.bool
        assert {h for h in range(n_heads) if mask[h].all()} == wanted and int(mask.sum()) == len(wanted) * d_head
    with pytest.raises(ValueError, match=f"head {n_heads} of block 1 does not exist"):
        head_masks(native_model, [[1, n_heads]])


def test_iti_at_given_heads_shifts_those_with_the_top_k_fits_probes(gpt2_model, text_sets) -> None:
    source, target = fit_sets(text_sets)
    top = HookedSteerer(gpt2_model).fit(source, target, method="iti", k=12, progress=False)
    ranked = top.history_["heads"]
    given = HookedSteerer(gpt2_model).fit(source, target, method="iti", heads=ranked[-2:], progress=False)
    assert given.history_["heads"] == ranked[-2:] and given.history_["k"] == 2
    for layer, head in ranked[-2:]:  # the same probe, the same shift as in the top-12 fit
        site = next(s for s in given.maps_ if s.startswith(f"blocks.{layer}."))
        assert torch.equal(given.maps_[site].bias[head], top.maps_[site].bias[head])
    with pytest.raises(ValueError, match="names no head or one ITI did not probe"):
        HookedSteerer(gpt2_model).fit(source, target, method="iti", heads=[[0, 99]], progress=False)
