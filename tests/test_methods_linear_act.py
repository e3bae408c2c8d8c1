"""Linear-AcT: the closed-form 1-D OT fit, layer after layer, with the source support range."""

from __future__ import annotations

import numpy as np
import ot
import pytest
import torch
from toy_model import SOURCE, TARGET, Toy

from lineas_tl import HookedSteerer, collect_activations
from lineas_tl.methods.linear_act import closed_form_ot

N_FIT = 32


def _ls(u: list[float], v: list[float]) -> tuple[float, float]:
    """omega, b of the least-squares line through (sorted u, sorted v), written out."""
    u, v = sorted(u), sorted(v)
    mu, mv = sum(u) / len(u), sum(v) / len(v)
    w = sum((a - mu) * (b - mv) for a, b in zip(u, v)) / sum((a - mu) ** 2 for a in u)
    return w, mv - w * mu


def test_closed_form_on_three_points() -> None:
    u = torch.tensor([[3.0, 10.0], [1.0, 30.0], [2.0, 20.0]])
    v = torch.tensor([[6.0, 1.0], [2.0, 0.0], [4.0, 2.0]])
    omega, bias = closed_form_ot(u, v)
    # sorted: (1,2,3) -> (2,4,6) is v = 2u; (10,20,30) -> (0,1,2) is v = 0.1u - 1
    torch.testing.assert_close(omega, torch.tensor([2.0, 0.1]))
    torch.testing.assert_close(bias, torch.tensor([0.0, -1.0]))
    # a constant source coordinate cannot be scaled: omega = 1 and b matches the means
    omega, bias = closed_form_ot(torch.ones(3, 1), torch.tensor([[1.0], [2.0], [3.0]]))
    assert omega.tolist() == [1.0] and bias.tolist() == [1.0]


def test_hand_computed_maps_and_ranges_on_the_toy_model() -> None:
    # each toy prompt twice: Linear-AcT needs at least 4 prompts a set, and repeating every point
    # leaves the sorted least-squares line, the min and the max unchanged
    steerer = HookedSteerer(Toy(), sites=["hook1", "hook2"]).fit(SOURCE * 2, TARGET * 2, method="linear_act", progress=False)
    m1, m2 = steerer.maps_["hook1"], steerer.maps_["hook2"]
    torch.testing.assert_close(m1.weight, torch.tensor([2.0, 0.1]))
    torch.testing.assert_close(m1.bias, torch.tensor([0.0, -1.0]))
    assert m1.lo.tolist() == [1.0, 10.0] and m1.hi.tolist() == [3.0, 30.0]  # min, max of the source rows
    # hook2 reads 2 * hook1's steered output. Only values strictly inside (lo, hi) are mapped:
    # coordinate 0: 1 -> 1, 2 -> 2*2 = 4, 3 -> 3;  coordinate 1: 10 -> 10, 30 -> 30, 20 -> 0.1*20-1 = 1
    u2 = ([2.0, 8.0, 6.0], [20.0, 60.0, 2.0])
    v2 = ([4.0, 8.0, 12.0], [0.0, 2.0, 4.0])
    expected = [_ls(u2[j], v2[j]) for j in range(2)]
    assert expected[0] == pytest.approx((9 / 7, 8 / 7))
    torch.testing.assert_close(m2.weight, torch.tensor([e[0] for e in expected]))
    torch.testing.assert_close(m2.bias, torch.tensor([e[1] for e in expected]))
    assert m2.lo.tolist() == [2.0, 2.0] and m2.hi.tolist() == [8.0, 60.0]

    off = HookedSteerer(Toy(), sites=["hook1", "hook2"]).fit(
        SOURCE * 2, TARGET * 2, method="linear_act", support=None, progress=False
    )
    assert not off.maps_["hook1"].has_range
    # without the range every source row is mapped, and hook2 sees 2 * (2u, 0.1u - 1) exactly on target
    torch.testing.assert_close(off.maps_["hook2"].weight, torch.ones(2))
    torch.testing.assert_close(off.maps_["hook2"].bias, torch.zeros(2), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="support"):
        HookedSteerer(Toy(), sites=["hook1"]).fit(SOURCE * 2, TARGET * 2, method="linear_act", support="q_5_95")


def test_support_range_leaves_out_of_range_tokens_alone(gpt2_model, text_sets) -> None:
    source, target = text_sets["source"][:N_FIT], text_sets["target"][:N_FIT]
    steerer = HookedSteerer(gpt2_model).fit(source, target, method="linear_act", progress=False)
    site = steerer.sites[0]
    m = steerer.maps_[site]
    u = collect_activations(gpt2_model, source, [site], progress=False)[site]
    torch.testing.assert_close(m.lo, u.amin(0))
    torch.testing.assert_close(m.hi, u.amax(0))
    tokens = gpt2_model.to_tokens("you stupid idiot have a lovely day")
    _, cache = gpt2_model.run_with_cache(tokens, names_filter=[site])
    z = cache[site]
    inside = (z > m.lo) & (z < m.hi)
    assert inside.any() and (~inside).any()
    out = m(z)
    assert torch.equal(out[~inside], z[~inside])
    torch.testing.assert_close(out[inside], (m.weight * z + m.bias)[inside])


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
    source, target = text_sets["source"][:N_FIT], text_sets["target"][:N_FIT]
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
        np.testing.assert_allclose(m.lo.numpy(), un.min(0), atol=1e-6, rtol=0)
        for j in (0, un.shape[1] // 2):
            wp, bp = _pot_ot_fit(un[:, j], vn[:, j])
            assert m.weight[j].item() == pytest.approx(wp, abs=1e-4, rel=1e-4)
            assert m.bias[j].item() == pytest.approx(bp, abs=1e-4, rel=1e-4)


def test_linear_act_needs_four_prompts_a_set() -> None:
    from lineas_tl.validate import SteeringInputError

    with pytest.raises(SteeringInputError, match="Linear-AcT needs at least 4 source prompts.*got 3"):
        HookedSteerer(Toy(), sites=["hook1"]).fit(SOURCE, TARGET * 2, method="linear_act", progress=False)
    with pytest.raises(SteeringInputError, match="Linear-AcT needs at least 4 target prompts.*got 3"):
        HookedSteerer(Toy(), sites=["hook1"]).fit(SOURCE * 2, TARGET, method="linear_act", progress=False)
