"""Several steerers at once, in a defined order, and strength given per site."""

from __future__ import annotations

import pytest
import torch

from lineas_tl import AffineMap, HookedSteerer

TOKENS = torch.tensor([[5, 17, 3, 42, 8, 99, 23], [1, 2, 3, 4, 5, 6, 7]])


def random_steerer(model, sites, seed: int, scale: float = 0.3) -> HookedSteerer:
    """A steerer whose maps are random (far from the identity), so that order matters."""
    steerer = HookedSteerer(model, sites)
    g = torch.Generator().manual_seed(seed)
    maps = {}
    for site in steerer.sites:
        m = AffineMap((model.cfg.d_model,))
        with torch.no_grad():
            m.weight.copy_(1 + scale * torch.randn(m.feature_shape, generator=g))
            m.bias.copy_(scale * torch.randn(m.feature_shape, generator=g))
        m.requires_grad_(False)
        maps[site] = m
    steerer.maps_, steerer.method_ = maps, "manual"
    return steerer


def run_with(model, per_site_fns) -> torch.Tensor:
    """Run ``model`` on TOKENS with one hand-written hook per site."""
    hooks = [(site, lambda act, hook, fn=fn: fn(act)) for site, fn in per_site_fns.items()]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        return model(TOKENS)


def test_two_steerers_compose_in_the_order_entered(native_model):
    a = random_steerer(native_model, None, seed=1)
    b = random_steerer(native_model, None, seed=2)
    with torch.no_grad(), a.steer(0.5), b.steer(1.0):
        got = native_model(TOKENS)
    a_then_b = run_with(native_model, {s: lambda x, s=s: b.maps_[s](a.maps_[s](x, 0.5), 1.0) for s in a.sites})
    b_then_a = run_with(native_model, {s: lambda x, s=s: a.maps_[s](b.maps_[s](x, 1.0), 0.5) for s in a.sites})
    torch.testing.assert_close(got, a_then_b, rtol=0, atol=1e-6)
    assert (got - b_then_a).abs().max() > 1e-3  # the order is real, and it is the entering order

    with torch.no_grad(), b.steer(1.0), a.steer(0.5):
        swapped = native_model(TOKENS)
    torch.testing.assert_close(swapped, b_then_a, rtol=0, atol=1e-6)


def test_steerers_on_different_sites_both_apply(native_model):
    attn = random_steerer(native_model, r"blocks\.\d\.hook_attn_out", seed=3)
    mlp = random_steerer(native_model, r"blocks\.\d\.hook_mlp_out", seed=4)
    with torch.no_grad(), attn.steer(0.8), mlp.steer(0.3):
        got = native_model(TOKENS)
    fns = {s: (lambda x, s=s: attn.maps_[s](x, 0.8)) for s in attn.sites}
    fns |= {s: (lambda x, s=s: mlp.maps_[s](x, 0.3)) for s in mlp.sites}
    torch.testing.assert_close(got, run_with(native_model, fns), rtol=0, atol=1e-6)
    with torch.no_grad(), attn.steer(0.8):
        only_attn = native_model(TOKENS)
    assert (got - only_attn).abs().max() > 1e-3


def test_contexts_leave_the_model_untouched_on_exit_even_on_error(native_model):
    a = random_steerer(native_model, None, seed=1)
    b = random_steerer(native_model, None, seed=2)
    with torch.no_grad():
        base = native_model(TOKENS)
        with pytest.raises(RuntimeError, match="boom"), a.steer(0.5), b.steer(1.0):
            raise RuntimeError("boom")
        assert torch.equal(native_model(TOKENS), base)
        with a.steer(0.5):
            with b.steer(1.0):
                pass
            inner_exited = native_model(TOKENS)  # b gone, a still active
        assert torch.equal(native_model(TOKENS), base)
    with torch.no_grad(), a.steer(0.5):
        torch.testing.assert_close(inner_exited, native_model(TOKENS), rtol=0, atol=0)


def test_per_site_strength_steers_only_the_given_sites(native_model):
    a = random_steerer(native_model, "outputs", seed=5)
    strengths = {"blocks.0.hook_attn_out": 1.0, "blocks.2.mlp.hook_out": 0.25}  # alias and canonical names
    with torch.no_grad(), a.steer(strengths):
        got = native_model(TOKENS)
    expected = run_with(
        native_model,
        {
            "blocks.0.attn.hook_out": lambda x: a.maps_["blocks.0.attn.hook_out"](x, 1.0),
            "blocks.2.mlp.hook_out": lambda x: a.maps_["blocks.2.mlp.hook_out"](x, 0.25),
        },
    )
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_strength_zero_everywhere_is_bit_identical_to_unsteered(native_model):
    a = random_steerer(native_model, None, seed=6)
    with torch.no_grad():
        base = native_model(TOKENS)
        with a.steer(0.0):
            assert torch.equal(native_model(TOKENS), base)
        with a.steer({s: 0.0 for s in a.sites}):
            assert torch.equal(native_model(TOKENS), base)


def test_scalar_strength_equals_the_same_value_at_every_site(native_model):
    a = random_steerer(native_model, None, seed=7)
    with torch.no_grad():
        with a.steer(0.6):
            scalar = native_model(TOKENS)
        with a.steer({s: 0.6 for s in a.sites}):
            per_site = native_model(TOKENS)
    assert torch.equal(scalar, per_site)


def test_per_site_strength_rejects_sites_without_a_map(native_model):
    a = random_steerer(native_model, r"blocks\.\d\.hook_attn_out", seed=8)
    with pytest.raises(ValueError, match="no map at"):
        with a.steer({"blocks.0.hook_mlp_out": 1.0}):
            pass
    with pytest.raises(ValueError, match="not a hook point"):
        with a.steer({"blocks.0.hook_nonsense": 1.0}):
            pass


def test_inverse_undoes_the_map_when_composed(native_model):
    """T^{-1} after T at every site is the identity: the unsteered model comes back."""
    a = random_steerer(native_model, None, seed=9, scale=0.2)
    with torch.no_grad():
        base = native_model(TOKENS)
        with a.steer(1.0), a.steer(1.0, inverse=True):
            round_trip = native_model(TOKENS)
    torch.testing.assert_close(round_trip, base, rtol=1e-4, atol=1e-4)


def test_generation_under_two_steerers_uses_both(gpt2_model):
    torch.manual_seed(0)
    d = gpt2_model.cfg.d_model
    a = random_steerer(gpt2_model, r"blocks\.\d\.hook_attn_out", seed=10, scale=1.0)
    b = random_steerer(gpt2_model, r"blocks\.\d\.hook_mlp_out", seed=11, scale=1.0)
    assert all(m.feature_shape == (d,) for m in a.maps_.values())
    kw = dict(max_new_tokens=6, return_type="tokens", stop_at_eos=False)
    with b.steer(1.0):
        both = a.generate("the cat sat", strength=1.0, **kw)
    only_a = a.generate("the cat sat", strength=1.0, **kw)
    fns = {s: (lambda x, s=s: a.maps_[s](x, 1.0)) for s in a.sites}
    fns |= {s: (lambda x, s=s: b.maps_[s](x, 1.0)) for s in b.sites}
    hooks = [(site, lambda act, hook, fn=fn: fn(act)) for site, fn in fns.items()]
    with gpt2_model.hooks(fwd_hooks=hooks):
        manual = gpt2_model.generate(
            "the cat sat", max_new_tokens=6, do_sample=False, return_type="tokens", verbose=False, stop_at_eos=False
        )
    assert torch.equal(both, manual)
    assert not torch.equal(both, only_a)
