r"""Linear-AcT: the same affine maps, each fitted *locally* in closed form by 1-D optimal transport.

Rodriguez et al., *Controlling Language and Diffusion Models by Transporting Activations*
(arXiv 2410.23054). For each coordinate, sort the source values :math:`u` and target values
:math:`v` (matching quantiles when counts differ) and fit :math:`v_{(i)} \approx \omega u_{(i)} + b`
by least squares:

.. math::

    \omega = \frac{\sum_i \tilde u_{(i)} \tilde v_{(i)}}{\sum_i \tilde u_{(i)}^2}, \qquad
    b = \bar v - \omega \bar u

with :math:`\tilde x = x - \bar x`. Sites are fitted layer after layer, each on source activations
that already pass through the maps fitted upstream (``sequential=True``), but no map knows its effect
downstream: this is the local ablation LinEAS is measured against.

**Support range** (``support="q_0_100"``, the default, as the authors' ``LearnableOTHook`` with
``quantiles_src: q_0_100`` in apple/ml-act's ``linear_ot`` config): each coordinate's map applies
only where the activation lies strictly inside the range of that coordinate's pooled source values
seen at fit time, :math:`\min_i u_i < z < \max_i u_i`, and leaves it unchanged elsewhere (see
:meth:`~lineas_tl.maps.AffineMap.set_range`). Pooled values are means over a prompt's tokens, so
single tokens far from every mean (SmolLM2's BOS attention sink, whose residual is hundreds of times
larger than other tokens') are not extrapolated onto by :math:`\omega`. With the sequential fit the
range of site :math:`l` is read on source activations already steered upstream, as in AcT's
incremental fit. ``support=None`` maps every activation (no range).

Deviations from apple/ml-act that we keep:

- :math:`\omega, b` are the same least squares on sorted pooled values, computed in float64
  without the 1e-8 jitter the reference adds to the source values (a coordinate whose source values
  are all equal gets :math:`\omega = 1` and a pure mean shift instead); unequal source and target
  counts are matched by quantiles (the reference requires equal counts).
- On a diffusion UNet (activations ``[batch, channel, h, w]``) the reference tests each channel's
  *spatial mean* against the range (as here) but then maps only that mean, adding the resulting
  shift :math:`\lambda((\omega-1)\bar z + b)` to every pixel; here a channel in range has its
  affine map applied to every pixel, :math:`\lambda((\omega-1) z + b)`, the same map LinEAS uses.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from lineas_tl.maps import support_by_site
from lineas_tl.methods.base import FitContext, FitResult, register
from lineas_tl.validate import MIN_DISTRIBUTION_PROMPTS, check_prompts


def closed_form_ot(
    u: Float[Tensor, "n d"], v: Float[Tensor, "m d"], eps: float = 1e-12
) -> tuple[Float[Tensor, " d"], Float[Tensor, " d"]]:
    """Per-coordinate least-squares affine fit between sorted ``u`` and sorted ``v``."""
    u, v = u.double(), v.double()
    if u.shape[0] == v.shape[0]:
        us, vs = u.sort(0).values, v.sort(0).values
    else:
        k = max(u.shape[0], v.shape[0])
        q = (torch.arange(k, dtype=torch.float64, device=u.device) + 0.5) / k
        us, vs = torch.quantile(u, q, dim=0), torch.quantile(v, q, dim=0)
    uc, vc = us - us.mean(0), vs - vs.mean(0)
    denom = (uc * uc).sum(0)
    omega = torch.where(denom > eps, (uc * vc).sum(0) / denom.clamp_min(eps), torch.ones_like(denom))
    bias = vs.mean(0) - omega * us.mean(0)
    return omega.float(), bias.float()


SUPPORTS = ("q_0_100", None)


@register("linear_act")
def fit_linear_act(ctx: FitContext, *, sequential: bool = True, support: str | None = "q_0_100") -> FitResult:
    """Fit each site's map by closed-form 1-D OT, layer after layer.

    Args:
        sequential: fit site ``l`` on source activations steered by the maps of sites ``< l`` (as in
            AcT). ``False`` fits every site from the unsteered model in one pass.
        support: ``"q_0_100"`` (default): map a coordinate only where ``min(u) < z < max(u)`` over
            its pooled source values ``u``; ``None``: map every activation.

    Returns:
        the maps (with ``lo``/``hi`` set when ``support`` is given) and a history with ``support``
        (share of coordinates moved per site).

    Raises:
        SteeringInputError: fewer than :data:`~lineas_tl.validate.MIN_DISTRIBUTION_PROMPTS` (4)
            source or target prompts (a sort of two or three values per coordinate matches
            points, not distributions).
    """
    if support not in SUPPORTS:
        raise ValueError(f"unknown support {support!r}; choose one of {SUPPORTS}")
    check_prompts(ctx.source, "source", minimum=MIN_DISTRIBUTION_PROMPTS, method="Linear-AcT")
    check_prompts(ctx.target, "target", minimum=MIN_DISTRIBUTION_PROMPTS, method="Linear-AcT")
    target = ctx.pooled("target")
    maps = ctx.identity_maps("affine")

    def fit_site(site: str, u: Tensor) -> None:
        omega, bias = closed_form_ot(u, target[site])
        shape = maps[site].feature_shape
        with torch.no_grad():
            maps[site].weight.copy_(omega.reshape(shape))
            maps[site].bias.copy_(bias.reshape(shape))
        if support == "q_0_100":
            maps[site].set_range(u.amin(0).reshape(shape), u.amax(0).reshape(shape))

    ctx.fit_each_site(maps, fit_site, incremental=sequential)
    for m in maps.values():
        m.requires_grad_(False)
    return FitResult(maps, {"support": support_by_site(maps)})
