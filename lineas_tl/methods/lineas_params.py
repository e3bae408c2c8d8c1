"""How LinEAS's optimiser sees the maps: standardised parametrisations and the proximal step.

``standardize=True`` lets the optimiser move ``beta`` with ``b = sigma * beta`` (sigma: the target's
per-coordinate standard deviation); ``"both"`` also moves ``alpha`` with
``omega = 1 + (sigma / rms) * alpha``. The maps keep holding ``omega`` and ``b``; the
parametrisations are removed once the fit ends.
"""

from __future__ import annotations

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


def _prox(maps: dict[str, AffineMap], tau_l1: float, tau_group: float) -> None:
    """Sparse-group-lasso proximal step on each map's deviation from the identity.

    With a standardised map the step applies to the optimised parameters (the deviations in target
    standard deviations), so the penalty does not favour low-variance coordinates.
    """
    with torch.no_grad():  # every group at once, in a few multi-tensor kernels (same arithmetic)
        groups, weights = [], []
        for m in maps.values():
            for name in ("weight", "bias"):
                if parametrize.is_parametrized(m, name):
                    groups.append(getattr(m.parametrizations, name).original)
                elif name == "weight":
                    weights.append(m.weight)
                else:
                    groups.append(m.bias)
        deltas = list(torch._foreach_sub(weights, 1)) if weights else []
        prox_sparse_group_lasso_many(groups + deltas, tau_l1, tau_group)
        if weights:
            torch._foreach_copy_(weights, torch._foreach_add(deltas, 1))
