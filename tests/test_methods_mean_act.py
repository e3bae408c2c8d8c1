"""Mean-AcT (incremental, the default) and CAA (every mean from the unsteered model)."""

from __future__ import annotations

import torch
from toy_model import SOURCE, TARGET, Toy

from lineas_tl import HookedSteerer, collect_activations


def test_hand_computed_shifts_on_the_toy_model() -> None:
    # hook1 rows: source means (1+2+3)/3 = 2, (10+30+20)/3 = 20; target means 4, 1.
    # hook2 = 2 * hook1's output.
    model = Toy()
    mean_act = HookedSteerer(model, sites=["hook1", "hook2"]).fit(SOURCE, TARGET, method="mean_act", progress=False)
    caa = HookedSteerer(model, sites=["hook1", "hook2"]).fit(SOURCE, TARGET, method="caa", progress=False)
    for steerer in (mean_act, caa):
        assert steerer.maps_["hook1"].bias.tolist() == [2.0, -19.0]
        assert all(m.kind == "shift" and m.weight.tolist() == [1.0, 1.0] for m in steerer.maps_.values())
    # Mean-AcT reads hook2 after hook1's shift: 2 * (2 + 2, 20 - 19) = (8, 2), the target mean: no shift.
    assert mean_act.maps_["hook2"].bias.tolist() == [0.0, 0.0]
    # CAA reads hook2 unsteered: 2 * (4, 1) - 2 * (2, 20) = (4, -38), on top of hook1's shift.
    assert caa.maps_["hook2"].bias.tolist() == [4.0, -38.0]
    assert mean_act.history_["shift_norm"]["hook2"] == 0.0


def test_caa_shift_is_the_unsteered_mean_difference(hf_model, text_sets) -> None:
    source, target = text_sets["source"][:32], text_sets["target"][:32]
    steerer = HookedSteerer(hf_model).fit(source, target, method="caa", progress=False)
    u = collect_activations(hf_model, source, steerer.sites, progress=False)
    v = collect_activations(hf_model, target, steerer.sites, progress=False)
    assert list(steerer.maps_) == steerer.sites
    for site, m in steerer.maps_.items():
        assert m.kind == "shift" and not m.weight.requires_grad
        torch.testing.assert_close(m.weight, torch.ones_like(m.weight))
        torch.testing.assert_close(m.bias, v[site].mean(0) - u[site].mean(0), atol=1e-5, rtol=1e-5)


def test_mean_act_matches_the_target_mean_at_every_site(native_model) -> None:
    g = torch.Generator().manual_seed(0)
    source = [torch.randint(0, 50, (int(n),), generator=g).tolist() for n in torch.randint(3, 9, (16,), generator=g)]
    target = [torch.randint(50, 100, (int(n),), generator=g).tolist() for n in torch.randint(3, 9, (16,), generator=g)]
    steerer = HookedSteerer(native_model).fit(source, target, method="mean_act", progress=False)
    steered = collect_activations(native_model, source, steerer.sites, maps=steerer.maps_, progress=False)
    v = collect_activations(native_model, target, steerer.sites, progress=False)
    for site in steerer.sites:
        torch.testing.assert_close(steered[site].mean(0), v[site].mean(0), atol=1e-4, rtol=1e-4)
    # CAA matches only the first site exactly: downstream sites also receive the upstream shifts.
    caa = HookedSteerer(native_model).fit(source, target, method="caa", progress=False)
    first, last = steerer.sites[0], steerer.sites[-1]
    torch.testing.assert_close(caa.maps_[first].bias, steerer.maps_[first].bias)
    assert not torch.allclose(caa.maps_[last].bias, steerer.maps_[last].bias, atol=1e-5)
    same = HookedSteerer(native_model).fit(source, target, method="mean_act", sequential=False, progress=False)
    torch.testing.assert_close(same.maps_[last].bias, caa.maps_[last].bias, atol=0, rtol=0)


def test_incremental_fit_in_one_pass_equals_one_pass_per_site(native_model) -> None:
    # All 12 prompts in one batch: one forward pass fits every site; batches of 5: a pass per site.
    g = torch.Generator().manual_seed(1)
    source = [torch.randint(0, 50, (int(n),), generator=g).tolist() for n in torch.randint(3, 9, (12,), generator=g)]
    target = [torch.randint(50, 100, (int(n),), generator=g).tolist() for n in torch.randint(3, 9, (12,), generator=g)]
    for method in ("mean_act", "linear_act"):
        one = HookedSteerer(native_model).fit(source, target, method, collect_batch_size=12, progress=False)
        per_site = HookedSteerer(native_model).fit(source, target, method, collect_batch_size=5, progress=False)
        for site in one.sites:
            a, b = one.maps_[site], per_site.maps_[site]
            torch.testing.assert_close(a.weight, b.weight, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(a.bias, b.bias, atol=1e-5, rtol=1e-5)
