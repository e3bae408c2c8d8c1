"""How LinEAS's optimiser sees the maps: the optimiser, standardised parametrisations, the proximal
step, and the projection that keeps ``fit(..., restrict=...)``'s maps at the identity outside their masks.

``standardize=True`` lets the optimiser move ``beta`` with ``b = sigma * beta`` (sigma: the target's
per-coordinate standard deviation); ``"both"`` also moves ``alpha`` with
``omega = 1 + (sigma / rms) * alpha``. The maps keep holding ``omega`` and ``b``; the
parametrisations are removed once the fit ends.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from lineas_tl.losses import prox_sparse_group_lasso_many
from lineas_tl.maps import AffineMap


class _Scaled(nn.Module):
    """``b = scale * beta``: the optimiser sees ``beta``, the map still holds ``b``."""

    def __init__(self, scale: Tensor):
        super().__init__()
        self.register_buffer("scale", scale)

    def forward(self, beta: Tensor) -> Tensor:
        return beta * self.scale

    def right_inverse(self, b: Tensor) -> Tensor:
        return b / self.scale


class _Offset(nn.Module):
    """``omega = 1 + scale * alpha``: the optimiser sees ``alpha``, the map still holds ``omega``."""

    def __init__(self, scale: Tensor):
        super().__init__()
        self.register_buffer("scale", scale)

    def forward(self, alpha: Tensor) -> Tensor:
        return 1 + alpha * self.scale

    def right_inverse(self, omega: Tensor) -> Tensor:
        return (omega - 1) / self.scale


def make_optimizer(name: str, params: list[Tensor], lr: float) -> torch.optim.Optimizer:
    """The fit's optimiser: Adam or AdamW with betas (0.9, 0.9), as the authors' code, or plain SGD."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.9))
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.9))
    raise ValueError(f"unknown optimizer {name!r}; choose 'adam', 'adamw' or 'sgd'")


def _standardize(maps: dict[str, AffineMap], target: dict[str, Tensor], how: Any) -> None:
    """Reparametrise each map so that a unit step moves its output by about one target std.

    ``b = sigma * beta``; with ``how == "both"`` also ``omega = 1 + (sigma / rms) * alpha``, since a
    change of omega moves ``z`` by ``delta * |z|``, about ``delta * rms`` (rms: the target's
    root-mean-square value).
    """
    for site, m in maps.items():
        v = target[site]
        std = v.std(dim=0) if v.shape[0] > 1 else torch.ones_like(v[0])
        std = std.clamp_min(1e-3 * float(std.max().clamp_min(1e-12)))
        parametrize.register_parametrization(m, "bias", _Scaled(std.reshape(m.feature_shape).to(m.bias.device)))
        if how == "both":
            rms = v.pow(2).mean(dim=0).sqrt().clamp_min(1e-12)
            ratio = (std / rms).clamp(1e-3, 1.0).reshape(m.feature_shape).to(m.weight.device)
            parametrize.register_parametrization(m, "weight", _Offset(ratio))


def _prox(maps: dict[str, AffineMap], tau_l1: float, tau_group: float, by_head: bool = False) -> None:
    """Sparse-group-lasso proximal step on each map's deviation from the identity.

    Each site's scale and shift are each a group; with ``by_head`` a site of features
    ``(n_heads, d_head)`` has one group per head instead. With a standardised map the step applies to
    the optimised parameters (the deviations in target standard deviations), so the penalty does not
    favour low-variance coordinates.
    """
    with torch.no_grad():  # every group at once, in a few multi-tensor kernels (same arithmetic)
        groups, weights = [], []
        for m in maps.values():
            for name in ("weight", "bias"):
                if (original := _optimised(m, name)) is not None:
                    groups.append(original)
                elif name == "weight":
                    weights.append(m.weight)
                else:
                    groups.append(m.bias)
        deltas = list(torch._foreach_sub(weights, 1)) if weights else []
        prox_sparse_group_lasso_many(_split_heads(groups + deltas, by_head), tau_l1, tau_group)
        if weights:
            torch._foreach_copy_(weights, torch._foreach_add(deltas, 1))


def _optimised(m: AffineMap, name: str) -> Tensor | None:
    """The tensor the optimiser moves for ``m.<name>`` when :func:`_standardize` reparametrised it
    (its deviation from the identity in standardised units), else None."""
    return getattr(m.parametrizations, name).original if parametrize.is_parametrized(m, name) else None


def _split_heads(groups: list[Tensor], by_head: bool) -> list[Tensor]:
    """Each 2-D group as one view per row (a head's, at ``(n_heads, d_head)`` sites) when ``by_head``;
    in-place updates of the views reach the whole."""
    return [part for g in groups for part in ([g[i] for i in range(len(g))] if by_head and g.dim() == 2 else [g])]


def group_norms(maps: dict[str, AffineMap], by_head: bool = False) -> dict[str, list[float]]:
    """The norm of each site's deviation from the identity in the units the proximal step sees (per
    head with ``by_head`` at ``(n_heads, d_head)`` sites: ``sqrt(|scale_h|^2 + |shift_h|^2)``); call
    before the standardising parametrisations are removed."""
    norms: dict[str, list[float]] = {}
    for site, m in maps.items():
        scale, shift = _optimised(m, "weight"), _optimised(m, "bias")
        parts = [(m.weight - 1 if scale is None else scale).detach(), (m.bias if shift is None else shift).detach()]
        per_head = by_head and parts[0].dim() == 2
        squares = sum(p.pow(2).sum(dim=-1) if per_head else p.pow(2).sum().reshape(1) for p in parts)
        norms[site] = squares.sqrt().tolist()
    return norms


def resolve_restrict(model: Any, maps: dict[str, AffineMap], restrict: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
    """Check ``fit(..., restrict=...)`` and key its masks by the fit's canonical site names.

    Raises:
        SteeringInputError: a mask for a site the fit does not steer, or whose size is not the site's
            feature count, or that is not boolean.
    """
    from lineas_tl.sites import resolve_sites
    from lineas_tl.validate import SteeringInputError

    masks: dict[str, Tensor] = {}
    for name, mask in (restrict or {}).items():
        site = resolve_sites(model, name)[0] if name not in maps else name
        if site not in maps:
            raise SteeringInputError(
                f"restrict names {name!r}, which this fit does not steer (its sites: {list(maps)}); "
                "pass masks only for the steerer's sites, or add the site with HookedSteerer(model, sites=...)"
            )
        shape = maps[site].feature_shape
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.numel() != math.prod(shape):
            got = f"a {mask.dtype} tensor of shape {tuple(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
            raise SteeringInputError(
                f"restrict's mask for {name!r} is {got}; give a boolean tensor of the site's feature "
                f"shape {shape} (True: a coordinate the map may move)"
            )
        masks[site] = mask.reshape(shape).to(maps[site].bias.device)  # once, not every projection step
    return masks


def project(maps: dict[str, AffineMap], masks: dict[str, Tensor]) -> None:
    """Set each masked map back to the identity outside its mask (``omega = 1``, ``b = 0``, or the
    standardised deviations 0): the projection step of ``fit(..., restrict=...)``."""
    with torch.no_grad():
        for site, mask in masks.items():
            m = maps[site]
            for name, identity in (("weight", 1.0), ("bias", 0.0)):
                if (original := _optimised(m, name)) is not None:
                    param, identity = original, 0.0
                else:
                    param = getattr(m, name)
                param.masked_fill_(~mask.expand_as(param), identity)
