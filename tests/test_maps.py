import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lineas_tl.maps import AffineMap, support_by_site


def fitted_map(d: int = 6, seed: int = 0) -> AffineMap:
    g = torch.Generator().manual_seed(seed)
    m = AffineMap((d,), feature_axis=2)
    with torch.no_grad():
        m.weight.copy_(1 + 0.5 * torch.rand(d, generator=g))
        m.bias.copy_(torch.randn(d, generator=g))
    return m


def test_identity_at_init_and_strength_zero():
    m = AffineMap((5,))
    z = torch.randn(2, 3, 5)
    assert m.is_identity()
    assert torch.equal(m(z), z)
    fm = fitted_map(5)
    assert torch.equal(fm(z, strength=0.0), z)


@settings(max_examples=25, deadline=None)
@given(lam=st.floats(0.0, 2.0))
def test_strength_interpolates_linearly(lam: float):
    m = fitted_map()
    z = torch.randn(3, 4, 6)
    expected = (1 - lam) * z + lam * (m.weight * z + m.bias)
    torch.testing.assert_close(m(z, lam), expected, atol=1e-5, rtol=1e-5)


def test_inverse_undoes_the_map():
    m = fitted_map()
    z = torch.randn(3, 4, 6)
    torch.testing.assert_close(m(m(z), inverse=True), z, atol=1e-5, rtol=1e-5)


def test_channel_first_broadcast():
    m = AffineMap((3,), feature_axis=1)
    with torch.no_grad():
        m.bias.copy_(torch.tensor([1.0, 2.0, 3.0]))
    x = torch.zeros(2, 3, 4, 4)
    out = m(x)
    assert torch.equal(out[:, 1], torch.full((2, 4, 4), 2.0))


def test_maps_cast_to_activation_dtype():
    m = fitted_map()
    z = torch.randn(2, 3, 6, dtype=torch.float64)
    assert m(z).dtype == torch.float64


def test_support_counts_moved_coordinates():
    m = AffineMap((4,))
    with torch.no_grad():
        m.bias[1] = 0.5
        m.weight[3] = 1.1
    assert support_by_site({"s": m}) == {"s": 0.5}


# --------------------------------------------------------------- support range (Linear-AcT)
def range_map() -> AffineMap:
    m = AffineMap((2,))
    with torch.no_grad():
        m.weight.copy_(torch.tensor([2.0, 0.5]))
        m.bias.copy_(torch.tensor([1.0, 0.0]))
    m.set_range(torch.tensor([0.0, -1.0]), torch.tensor([1.0, 1.0]))
    return m


def test_range_maps_only_inside_the_open_interval():
    m = range_map()
    z = torch.tensor([[[0.5, 2.0], [1.5, 0.5], [1.0, -1.0]]])  # [1, 3 pos, 2]
    # inside (0,1) / (-1,1): 2*0.5+1 = 2 and 0.5*0.5 = 0.25; outside or on the bounds: unchanged
    expected = torch.tensor([[[2.0, 2.0], [1.5, 0.25], [1.0, -1.0]]])
    torch.testing.assert_close(m(z), expected)
    torch.testing.assert_close(m(z, 0.5), torch.tensor([[[1.25, 2.0], [1.5, 0.375], [1.0, -1.0]]]))
    assert torch.equal(m(z, 0.0), z)


def test_range_inverse_applies_on_the_image_of_the_range():
    m = range_map()
    # image of (0,1) under 2z+1 is (1,3); of (-1,1) under 0.5z is (-0.5,0.5)
    y = torch.tensor([[[2.0, 2.0], [0.5, 0.25]]])
    torch.testing.assert_close(m(y, inverse=True), torch.tensor([[[0.5, 2.0], [0.5, 0.5]]]))
    z = torch.rand(4, 5, 2) * 4 - 2
    moved = (z > m.lo) & (z < m.hi)
    back = m(m(z), inverse=True)
    torch.testing.assert_close(back[moved], z[moved])  # T^-1 undoes T wherever T moved


def test_range_is_none_by_default_and_validated():
    m = AffineMap((2,))
    assert m.lo is None and m.hi is None and not m.has_range and m.fold_blocker() is None
    assert "lo" not in m.state_dict()
    with pytest.raises(ValueError, match="both"):
        m.set_range(torch.zeros(2), None)
    with pytest.raises(ValueError, match="shape"):
        m.set_range(torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match="exceed"):
        m.set_range(torch.ones(2), torch.zeros(2))
    assert "support range" in range_map().fold_blocker()
    m2 = range_map()
    m2.set_range(None, None)
    assert not m2.has_range


# ------------------------------------------------------------------ front positions (ActAdd)
def front_map() -> AffineMap:
    m = AffineMap((2,), kind="front", n_front=2)
    with torch.no_grad():
        m.bias.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    return m


def test_front_map_adds_row_t_at_prompt_position_t_only():
    m = front_map()
    z = torch.zeros(2, 3, 2)
    expected = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [0.0, 0.0]]] * 2)
    torch.testing.assert_close(m(z), expected)
    torch.testing.assert_close(m(z, 0.5), expected / 2)
    torch.testing.assert_close(m(z, inverse=True), -expected)
    # row 0 left-padded by one position: its prompt starts at position 1
    where = torch.tensor([[-1, 0, 1], [0, 1, 2]])
    got = m(z, positions=where)
    torch.testing.assert_close(got[0], torch.tensor([[0.0, 0.0], [1.0, 2.0], [3.0, 4.0]]))
    torch.testing.assert_close(got[1], expected[1])
    # one cached generation step: a single position past the prompt is left alone
    assert torch.equal(m(torch.zeros(2, 1, 2), positions=torch.tensor([[5], [4]])), torch.zeros(2, 1, 2))


def test_front_map_checks_and_blocks_folding():
    assert "first positions" in front_map().fold_blocker()
    assert front_map().support().tolist() == [True, True]
    with pytest.raises(ValueError, match="n_front"):
        AffineMap((2,), kind="front")
    with pytest.raises(ValueError, match="n_front"):
        AffineMap((2,), n_front=3)
    with pytest.raises(ValueError, match="batch, pos"):
        AffineMap((2,), feature_axis=1, kind="front", n_front=1)
    with pytest.raises(ValueError, match="range"):
        front_map().set_range(torch.zeros(2), torch.ones(2))


def test_range_on_a_feature_map_tests_each_channels_spatial_mean():
    m = AffineMap((2,), feature_axis=1)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([2.0, 2.0]))
    m.set_range(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 1.0]))
    # channel 0: pixels -1 and 2 (both outside (0, 1)), mean 0.5 inside -> every pixel mapped
    # channel 1: pixels 0.5 and 1.5, mean 1.0 on the bound -> left alone
    z = torch.tensor([[[[-1.0, 2.0]], [[0.5, 1.5]]]])  # [1, 2 channels, 1, 2]
    expected = torch.tensor([[[[-2.0, 4.0]], [[0.5, 1.5]]]])
    torch.testing.assert_close(m(z), expected)
    torch.testing.assert_close(m(m(z), inverse=True)[:, 0], z[:, 0])
