r"""Mean-AcT and CAA: shift each site by the difference of the target and source means.

The mean-matching special case of AcT (Rodriguez et al., *Controlling Language and Diffusion Models
by Transporting Activations*, arXiv 2410.23054) with :math:`\omega = 1`, and the per-site form of
Contrastive Activation Addition (Rimsky et al., *Steering Llama 2 via Contrastive Activation
Addition*, ACL 2024). On the pooled activations :math:`u_i` (source) and :math:`v_j` (target) of a
site:

.. math::

    b = \frac{1}{m}\sum_j v_j - \frac{1}{n}\sum_i u_i, \qquad
    T^\lambda(z) = z + \lambda\, b

so the strength :math:`\lambda \in [0, 1]` interpolates between the unsteered model and a full mean
match (CAA's "multiplier"; :math:`\lambda > 1` extrapolates).

Two methods share this module:

``mean_act`` (Mean-AcT, as the authors' code fits it: apple/ml-act's ``mean_ot`` config,
``incremental: incr``)
    sites are fitted layer after layer, each on source activations already shifted by the maps
    fitted upstream, so at full strength the source mean lands on the target mean at *every* site.
``caa`` (the non-incremental form)
    every site's source mean is read from the unsteered model in one pass. Downstream sites then
    also receive the upstream shifts, so the shifts compound and over-steer past the target.

Where it hooks: the steerer's sites (every block's ``hook_attn_out`` and ``hook_mlp_out`` by
default), with the steerer's pooling (mean over real tokens by default), so the shift is fitted on
exactly the data LinEAS and Linear-AcT see. CAA as published uses one residual-stream layer and the
activation at the answer token; pass ``sites=["blocks.L.hook_resid_pre"]`` and ``pooling="last"`` to
the :class:`~lineas_tl.HookedSteerer` for that variant.

Deviation from apple/ml-act that we keep: the reference (``OnlyMeanHook``) leaves a coordinate
unshifted when its source or target standard deviation is below 1e-4; here every coordinate is
shifted (a constant coordinate's shift is still the exact mean difference).
"""

from __future__ import annotations

import torch

from lineas_tl.maps import support_by_site
from lineas_tl.methods.base import FitContext, FitResult, register


@register("mean_act")
def fit_mean_act(ctx: FitContext, *, sequential: bool = True) -> FitResult:
    r"""Fit one additive shift :math:`b_l = \bar v_l - \bar u_l` per site (``kind="shift"`` maps).

    Args:
        sequential: ``True`` (default, Mean-AcT): site ``l``'s source mean is read on activations
            already shifted by the maps of sites ``< l``. ``False``: every source mean is read from
            the unsteered model in one pass (the ``caa`` method).

    Returns:
        the maps and a history with ``shift_norm`` (per site, :math:`\|b_l\|_2`) and ``support``.
    """
    target = ctx.pooled("target")
    maps = ctx.identity_maps("shift")

    def fit_site(site: str, u: torch.Tensor) -> None:
        shift = target[site].double().mean(0) - u.double().mean(0)
        with torch.no_grad():
            maps[site].bias.copy_(shift.float().reshape(maps[site].feature_shape))

    ctx.fit_each_site(maps, fit_site, incremental=sequential)
    for m in maps.values():
        m.requires_grad_(False)
    history = {
        "shift_norm": {s: float(m.bias.norm()) for s, m in maps.items()},
        "support": support_by_site(maps),
    }
    return FitResult(maps, history)


@register("caa")
def fit_caa(ctx: FitContext) -> FitResult:
    r"""CAA: :math:`b_l = \bar v_l - \bar u_l` with every mean read from the unsteered model."""
    return fit_mean_act(ctx, sequential=False)
