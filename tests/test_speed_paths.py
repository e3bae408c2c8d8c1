"""The fast paths give the results of the plain ones: fused steering hooks, batched losses and
proximal steps, the captured full-batch LinEAS step (run eagerly on the CPU), and the GPU
benchmark's ``--cpu-smoke``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lineas_tl import HookedSteerer
from lineas_tl.hooks import SteeringHook
from lineas_tl.losses import prox_sparse_group_lasso, prox_sparse_group_lasso_many, site_loss, site_losses
from lineas_tl.maps import AffineMap

ROOT = Path(__file__).resolve().parent.parent


def _map(d: int = 6, seed: int = 0) -> AffineMap:
    g = torch.Generator().manual_seed(seed)
    m = AffineMap((d,))
    with torch.no_grad():
        m.weight.copy_(1 + 0.5 * torch.rand(d, generator=g))
        m.bias.copy_(torch.randn(d, generator=g))
    return m.requires_grad_(False)


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("strength", [1.0, 0.3, 1.7])
def test_fused_hook_matches_the_map(strength: float, inverse: bool) -> None:
    m = _map()
    z = torch.randn(2, 5, 6)
    hook = SteeringHook(m, strength, inverse)
    torch.testing.assert_close(hook(z, hook=None), m(z, strength, inverse), atol=1e-6, rtol=1e-6)
    expected = (z - m.bias) / m.weight if inverse else m.weight * z + m.bias
    torch.testing.assert_close(hook(z, hook=None), z + strength * (expected - z), atol=1e-5, rtol=1e-5)
    assert hook._coef is not None  # inference: the coefficients were folded once and kept


def test_fused_hook_follows_in_place_changes_and_keeps_gradients() -> None:
    m = _map()
    z = torch.randn(2, 3, 6)
    hook = SteeringHook(m, 0.5)
    first = hook(z, hook=None)
    with torch.no_grad():
        m.bias.add_(1.0)  # the map changes in place: the folded coefficients must follow
    torch.testing.assert_close(hook(z, hook=None), first + 0.5, atol=1e-6, rtol=1e-6)
    m.requires_grad_(True)  # a fit: the hook must stay differentiable
    hook(z, hook=None).sum().backward()
    assert m.weight.grad is not None and m.bias.grad is not None


def test_zero_strength_hooks_are_not_attached(llama_model) -> None:  # type: ignore[no-untyped-def]
    steerer = HookedSteerer(llama_model)
    steerer.maps_ = {s: _map(llama_model.cfg.d_model, i) for i, s in enumerate(steerer.sites)}
    steerer.method_ = "manual"
    assert SteeringHook(_map(), 0.0).skips and not SteeringHook(_map(), 0.5).skips
    tokens = [[5, 6, 7, 8]]
    plain = steerer.runner.generate(tokens, lambda tracker: [], max_new_tokens=4, return_type="tokens")
    zero = steerer.generate(tokens, strength=0.0, max_new_tokens=4, return_type="tokens")
    assert torch.equal(plain, zero)


def test_batched_site_losses_and_prox_equal_the_per_site_ones() -> None:
    g = torch.Generator().manual_seed(0)
    u = {f"s{i}": torch.randn(16, 8, generator=g) for i in range(5)}
    v = {f"s{i}": torch.randn(16, 8, generator=g) for i in range(5)}
    ref = torch.stack([site_loss(u[s], v[s]) for s in u])
    torch.testing.assert_close(site_losses(u, v, batched=True), ref, rtol=1e-6, atol=0)  # summation order
    v_sorted = {s: x.sort(dim=0).values for s, x in v.items()}
    assert torch.equal(site_losses(u, v_sorted, target_sorted=True), ref)
    torch.testing.assert_close(site_losses(u, v_sorted, batched=True, target_sorted=True), ref, rtol=1e-6, atol=0)
    xs = [0.1 * torch.randn(20, generator=g) for _ in range(4)] + [torch.zeros(20)]
    one, many = [x.clone() for x in xs], [x.clone() for x in xs]
    for x in one:
        prox_sparse_group_lasso(x, 0.05, 0.02)
    prox_sparse_group_lasso_many(many, 0.05, 0.02)
    assert all(torch.equal(a, b) for a, b in zip(one, many))


def test_captured_step_gives_the_eager_maps(llama_model, text_sets) -> None:  # type: ignore[no-untyped-def]
    """``compile=True`` on a CPU runs the captured step's code eagerly (fixed row order, target
    sorted once, gradients from the step): the same maps as the plain fit, to float tolerance."""
    source, target = text_sets["source"][:12], text_sets["target"][:12]
    kw = dict(steps=12, early_stop=False, seed=0, progress=False, warn=False, batch_size=12)
    eager = HookedSteerer(llama_model).fit(source, target, **kw)
    with pytest.warns(RuntimeWarning, match="CUDA graphs need a CUDA device"):
        captured = HookedSteerer(llama_model).fit(source, target, compile=True, **kw)
    torch.testing.assert_close(
        torch.tensor(captured.history_["loss"]), torch.tensor(eager.history_["loss"]), rtol=1e-4, atol=1e-6
    )
    for site, m in eager.maps_.items():  # as a whole (Adam amplifies rounding where a gradient is ~0)
        c = captured.maps_[site]
        d_eager = torch.cat([(m.weight - 1).flatten(), m.bias.flatten()])
        d_captured = torch.cat([(c.weight - 1).flatten(), c.bias.flatten()])
        rel = float((d_captured - d_eager).norm() / d_eager.norm())
        assert rel < 1e-2, (site, rel)
    with pytest.warns(RuntimeWarning, match="full sets in every step"):
        HookedSteerer(llama_model).fit(source, target, compile=True, **dict(kw, batch_size=6, steps=2))


def test_gpu_benchmark_cpu_smoke(tmp_path: Path) -> None:
    """``benchmarks/bench_gpu.py --cpu-smoke`` runs every measurement on tiny shapes in seconds."""
    out = tmp_path / "RESULTS_gpu.md"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--cpu-smoke", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = out.read_text()
    assert "--cpu-smoke" in text and "fit step" in text and "HF `generate`" in text
