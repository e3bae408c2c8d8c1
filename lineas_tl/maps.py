r"""Steering maps: one per-coordinate affine transport map per hooked site.

.. math::

    T(z) = \omega \odot z + b, \qquad
    T^\lambda(z) = (1-\lambda)\, z + \lambda\, T(z) = z + \lambda\big((\omega - 1)\odot z + b\big),
    \qquad T^{-1}(z) = (z - b) / \omega

Every method in the library produces these maps: LinEAS and Linear-AcT fit ``omega`` and ``b``;
Mean-AcT, ActAdd and ITI fix ``omega = 1`` and only shift (``kind="shift"``). ITI's head shift is the
same map on ``attn.hook_z`` whose features are ``(n_heads, d_head)``.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor, nn

SUPPORT_THRESHOLD = 1e-5
KINDS = ("affine", "shift")


class AffineMap(nn.Module):
    r"""Per-coordinate affine map :math:`T(z) = \omega \odot z + b`, initialised at the identity.

    Args:
        feature_shape: shape of the features at the site (``(d_model,)``, ``(n_heads, d_head)``,
            ``(channels,)``).
        feature_axis: axis of the activation where the features start (2 for ``[batch, pos, d]``,
            1 for ``[batch, channel, h, w]``); axes after the features are broadcast over.
        kind: ``"affine"`` (``omega`` and ``b`` trainable) or ``"shift"`` (``omega`` fixed at 1).
    """

    def __init__(
        self,
        feature_shape: tuple[int, ...],
        feature_axis: int = 2,
        kind: str = "affine",
        device: torch.device | str | None = None,
    ):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown map kind {kind!r}; choose one of {KINDS}")
        self.feature_shape = tuple(int(s) for s in feature_shape)
        self.feature_axis = int(feature_axis)
        self.kind = kind
        self.weight = nn.Parameter(
            torch.ones(self.feature_shape, device=device), requires_grad=kind == "affine"
        )
        self.bias = nn.Parameter(torch.zeros(self.feature_shape, device=device))

    @property
    def n_features(self) -> int:
        return math.prod(self.feature_shape)

    def extra_repr(self) -> str:
        return f"feature_shape={self.feature_shape}, feature_axis={self.feature_axis}, kind={self.kind}"

    def _broadcast(self, p: Tensor, act: Tensor) -> Tensor:
        trailing = act.ndim - self.feature_axis - len(self.feature_shape)
        if trailing < 0:
            raise ValueError(
                f"activation of shape {tuple(act.shape)} has no features {self.feature_shape} at "
                f"axis {self.feature_axis}"
            )
        return p.to(dtype=act.dtype, device=act.device).reshape(*self.feature_shape, *[1] * trailing)

    def forward(self, act: Tensor, strength: float | Tensor = 1.0, inverse: bool = False) -> Tensor:
        """Apply :math:`T^\\lambda` (or the inverse map interpolated the same way) to ``act``."""
        w, b = self._broadcast(self.weight, act), self._broadcast(self.bias, act)
        if inverse:
            mapped = (act - b) / w
            return act + strength * (mapped - act)
        return act + strength * ((w - 1) * act + b)

    @torch.no_grad()
    def support(self, threshold: float = SUPPORT_THRESHOLD) -> Float[Tensor, " features"]:
        """Boolean mask of the coordinates this map moves (``|omega-1|`` or ``|b|`` above threshold)."""
        return ((self.weight - 1).abs() > threshold) | (self.bias.abs() > threshold)

    def support_fraction(self, threshold: float = SUPPORT_THRESHOLD) -> float:
        """Share of coordinates this map moves."""
        return float(self.support(threshold).float().mean())

    def is_identity(self) -> bool:
        return bool(torch.all(self.weight == 1) and torch.all(self.bias == 0))


def support_by_site(maps: dict[str, AffineMap]) -> dict[str, float]:
    """Share of coordinates moved, per site."""
    return {site: m.support_fraction() for site, m in maps.items()}
