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
