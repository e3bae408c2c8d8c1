import numpy as np
import ot
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lineas_tl.losses import global_loss, prox_sparse_group_lasso, site_loss, wasserstein_1d_sq


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 40), d=st.integers(1, 8), seed=st.integers(0, 10_000))
def test_sort_backend_equals_pot(n: int, d: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, d, generator=g, dtype=torch.float64)
    v = 2 * torch.randn(n, d, generator=g, dtype=torch.float64) + 1
    ref = torch.as_tensor(ot.wasserstein_1d(u.numpy(), v.numpy(), p=2))
    torch.testing.assert_close(wasserstein_1d_sq(u, v, "sort"), ref, atol=1e-5, rtol=1e-5)


def test_unequal_counts_use_pot():
    u, v = torch.randn(10, 3), torch.randn(17, 3)
    ref = ot.wasserstein_1d(u.numpy(), v.numpy(), p=2)
    np.testing.assert_allclose(wasserstein_1d_sq(u, v).numpy(), ref, atol=1e-5)
    with pytest.raises(ValueError, match="equal sample counts"):
        wasserstein_1d_sq(u, v, "sort")


def test_zero_for_identical_sets_and_permutations():
    u = torch.randn(16, 5)
    assert float(site_loss(u, u)) == 0.0
    assert float(site_loss(u, u[torch.randperm(16)])) == 0.0


def test_shift_gives_squared_distance_per_coordinate():
    u = torch.randn(32, 4)
    assert float(site_loss(u, u + 3.0)) == pytest.approx(4 * 9.0, rel=1e-5)


def test_differentiable_and_gradient_points_toward_target():
    u = torch.zeros(8, 2, requires_grad=True)
    v = torch.ones(8, 2)
    site_loss(u, v).backward()
    assert u.grad is not None and torch.all(u.grad < 0)


def test_pot_backend_is_differentiable():
    u = torch.randn(7, 3, requires_grad=True)
    site_loss(u, torch.randn(9, 3), "pot").backward()
    assert u.grad is not None and torch.isfinite(u.grad).all()


def test_sliced_is_zero_for_identical_sets():
    u = torch.randn(20, 4, dtype=torch.float64)
    assert float(site_loss(u, u, "sliced")) == pytest.approx(0.0, abs=1e-10)


def test_global_loss_averages_sites():
    a, b = torch.randn(8, 3), torch.randn(8, 3)
    loss, per = global_loss({"x": a, "y": a}, {"x": b, "y": a})
    assert float(loss) == pytest.approx(per["x"] / 2, rel=1e-6)
    with pytest.raises(ValueError, match="different sites"):
        global_loss({"x": a}, {"y": a})


def test_prox_soft_thresholds_then_shrinks_groups():
    x = torch.tensor([0.5, -0.05, 2.0])
    prox_sparse_group_lasso(x, tau_l1=0.1, tau_group=0.0)
    torch.testing.assert_close(x, torch.tensor([0.4, 0.0, 1.9]))
    y = torch.tensor([0.01, -0.01])
    prox_sparse_group_lasso(y, tau_l1=0.0, tau_group=1.0)
    assert torch.equal(y, torch.zeros(2))  # a weak group is removed whole
    z = torch.tensor([3.0, 4.0])
    prox_sparse_group_lasso(z, tau_l1=0.0, tau_group=0.5 / np.sqrt(2))
    torch.testing.assert_close(z, torch.tensor([3.0, 4.0]) * 0.9)
