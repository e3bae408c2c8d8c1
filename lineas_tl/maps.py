r"""Steering maps: one per-coordinate affine transport map per hooked site.

.. math::

    T(z) = \omega \odot z + b, \qquad
    T^\lambda(z) = (1-\lambda)\, z + \lambda\, T(z) = z + \lambda\big((\omega - 1)\odot z + b\big),
    \qquad T^{-1}(z) = (z - b) / \omega

Every method in the library produces these maps: LinEAS and Linear-AcT fit ``omega`` and ``b``;
Mean-AcT and ITI fix ``omega = 1`` and only shift (``kind="shift"``). ITI's head shift is the
same map on ``attn.hook_z`` whose features are ``(n_heads, d_head)``.

Two restrictions make a map act on some activations only; neither can be written into weights
(:meth:`AffineMap.fold_blocker` says why, for ``fold`` and the exporters):

- **Support range** (Linear-AcT, as in the authors' ``LearnableOTHook`` with ``q_0_100``): with
  per-coordinate bounds ``lo``/``hi`` set (:meth:`AffineMap.set_range`), a coordinate is mapped only
  where ``lo < z < hi`` and left unchanged elsewhere. The inverse map applies where ``z`` lies
  strictly inside the *image* of that range, :math:`T((lo, hi))`: exactly the values the forward map
  sends in-range activations to, so :math:`T^{-1}(T(z)) = z` for every ``z`` the forward map moved.
  Where the features are followed by more axes (a UNet's ``[batch, channel, h, w]``), the test is on
  each channel's spatial mean, the statistic the range was measured on (as the authors' hook does),
  and a channel in range is mapped at every pixel.
- **Front positions** (ActAdd, ``kind="front"``): ``b`` has shape ``(n_front, *features)`` and row
  ``p`` is added at position ``p`` of the prompt (0 = its first real token), for ``p < n_front``
  only; other positions are left unchanged. The caller passes each activation position's index in
  its prompt (see :class:`~lineas_tl.hooks.SteeringHook`).
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

SUPPORT_THRESHOLD = 1e-5
KINDS = ("affine", "shift", "front")


class AffineMap(nn.Module):
    r"""Per-coordinate affine map :math:`T(z) = \omega \odot z + b`, initialised at the identity.

    Args:
        feature_shape: shape of the features at the site (``(d_model,)``, ``(n_heads, d_head)``,
            ``(channels,)``).
        feature_axis: axis of the activation where the features start (2 for ``[batch, pos, d]``,
            1 for ``[batch, channel, h, w]``); axes after the features are broadcast over.
        kind: ``"affine"`` (``omega`` and ``b`` trainable), ``"shift"`` (``omega`` fixed at 1) or
            ``"front"`` (``omega`` fixed at 1, ``b`` of shape ``(n_front, *feature_shape)`` added at
            the first ``n_front`` prompt positions only; needs ``feature_axis=2``).
        n_front: number of front positions (``kind="front"`` only).

    Buffers ``lo`` and ``hi`` (``None`` unless :meth:`set_range` was called) hold the support range.
    """

    lo: Tensor | None
    hi: Tensor | None

    def __init__(
        self,
        feature_shape: tuple[int, ...],
        feature_axis: int = 2,
        kind: str = "affine",
        device: torch.device | str | None = None,
        n_front: int | None = None,
    ):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown map kind {kind!r}; choose one of {KINDS}")
        if (kind == "front") != (n_front is not None):
            raise ValueError("give n_front (>= 1) exactly when kind='front'")
        if kind == "front" and (int(n_front) < 1 or int(feature_axis) != 2):  # type: ignore[arg-type]
            raise ValueError("a 'front' map needs n_front >= 1 and activations [batch, pos, *features]")
        self.feature_shape = tuple(int(s) for s in feature_shape)
        self.feature_axis = int(feature_axis)
        self.kind = kind
        self.n_front = int(n_front) if n_front is not None else None
        self.weight = nn.Parameter(
            torch.ones(self.feature_shape, device=device), requires_grad=kind == "affine"
        )
        bias_shape = (self.n_front, *self.feature_shape) if self.n_front is not None else self.feature_shape
        self.bias = nn.Parameter(torch.zeros(bias_shape, device=device))
        self.register_buffer("lo", None)
        self.register_buffer("hi", None)

    @property
    def n_features(self) -> int:
        return math.prod(self.feature_shape)

    @property
    def has_range(self) -> bool:
        """Whether a support range restricts where the map applies."""
        return self.lo is not None

    def extra_repr(self) -> str:
        extra = f", n_front={self.n_front}" if self.n_front is not None else ""
        extra += ", support range" if self.has_range else ""
        return f"feature_shape={self.feature_shape}, feature_axis={self.feature_axis}, kind={self.kind}{extra}"

    @torch.no_grad()
    def set_range(self, lo: Float[Tensor, " *features"] | None, hi: Float[Tensor, " *features"] | None) -> None:
        """Restrict the map to ``lo < z < hi`` per coordinate (``None, None`` removes the range)."""
        if (lo is None) != (hi is None):
            raise ValueError("give both lo and hi, or neither")
        if lo is None or hi is None:
            self.lo, self.hi = None, None
            return
        if self.kind == "front":
            raise ValueError("a 'front' map cannot carry a support range")
        lo_t, hi_t = (torch.as_tensor(x, dtype=self.weight.dtype, device=self.weight.device) for x in (lo, hi))
        for name, t in (("lo", lo_t), ("hi", hi_t)):
            if tuple(t.shape) != self.feature_shape:
                raise ValueError(f"{name} has shape {tuple(t.shape)}; the map's features are {self.feature_shape}")
        if bool((lo_t > hi_t).any()):
            raise ValueError("lo must not exceed hi in any coordinate")
        self.lo, self.hi = lo_t.clone(), hi_t.clone()

    def fold_blocker(self) -> str | None:
        """Why this map cannot be written into weights (``None`` when it can, as far as the map goes)."""
        if self.kind == "front":
            return "it adds a per-position vector at the prompt's first positions only (ActAdd)"
        if self.has_range:
            return "it applies only where the activation lies inside its support range (Linear-AcT)"
        return None

    def _broadcast(self, p: Tensor, act: Tensor) -> Tensor:
        trailing = act.ndim - self.feature_axis - len(self.feature_shape)
        if trailing < 0:
            raise ValueError(
                f"activation of shape {tuple(act.shape)} has no features {self.feature_shape} at "
                f"axis {self.feature_axis}"
            )
        return p.to(dtype=act.dtype, device=act.device).reshape(*self.feature_shape, *[1] * trailing)

    def forward(
        self,
        act: Tensor,
        strength: float | Tensor = 1.0,
        inverse: bool = False,
        positions: Int[Tensor, "*batch pos"] | None = None,
    ) -> Tensor:
        """Apply :math:`T^\\lambda` (or the inverse map interpolated the same way) to ``act``.

        ``positions`` (``kind="front"`` only): each position's index in its prompt, ``[pos]`` or
        ``[batch, pos]`` (negative for padding); default ``0, 1, ...``.
        """
        if self.kind == "front":
            return self._front(act, strength, inverse, positions)
        scale, shift = self.coefficients(strength, inverse)
        moved = torch.addcmul(self._broadcast(shift, act), act, self._broadcast(scale, act))
        if self.lo is None or self.hi is None:
            return moved
        w, b = self._broadcast(self.weight, act), self._broadcast(self.bias, act)
        lo, hi = self._broadcast(self.lo, act), self._broadcast(self.hi, act)
        if inverse:  # the image of (lo, hi) under T
            lo, hi = torch.minimum(w * lo + b, w * hi + b), torch.maximum(w * lo + b, w * hi + b)
        trailing = tuple(range(self.feature_axis + len(self.feature_shape), act.ndim))
        stat = act.mean(dim=trailing, keepdim=True) if trailing else act  # a UNet: the spatial mean
        return torch.where((lo < stat) & (stat < hi), moved, act)

    def coefficients(self, strength: float | Tensor = 1.0, inverse: bool = False) -> tuple[Tensor, Tensor]:
        r"""``(scale, shift)`` of the interpolated map, :math:`T^\lambda(z) = \text{scale} \odot z + \text{shift}`.

        :math:`\text{scale} = 1 + \lambda(\omega - 1)`, :math:`\text{shift} = \lambda b`; for the inverse
        :math:`\omega \to 1/\omega`, :math:`b \to -b/\omega`. Feature-shaped, in the map's dtype and
        differentiable (a fit trains through them); at strength 1 they are ``omega`` and ``b`` themselves.
        Not for ``kind="front"`` maps.
        """
        w, b = self.weight, self.bias
        if inverse:
            w = 1 / w
            b = -b * w
        if isinstance(strength, (int, float)) and strength == 1:
            return w, b
        return 1 + strength * (w - 1), strength * b

    def _front(self, act: Tensor, strength: float | Tensor, inverse: bool, positions: Tensor | None) -> Tensor:
        assert self.n_front is not None
        if act.ndim < 3:
            raise ValueError(f"a 'front' map needs activations [batch, pos, *features], got {tuple(act.shape)}")
        if positions is None:
            positions = torch.arange(act.shape[1], device=act.device)
        pos = positions.to(act.device).long().expand(act.shape[0], act.shape[1])
        inside = (pos >= 0) & (pos < self.n_front)
        rows = self.bias.to(dtype=act.dtype, device=act.device)[pos.clamp(0, self.n_front - 1)]
        add = rows * inside.reshape(*inside.shape, *[1] * len(self.feature_shape)).to(act.dtype)
        return act - strength * add if inverse else act + strength * add

    @torch.no_grad()
    def support(self, threshold: float = SUPPORT_THRESHOLD) -> Float[Tensor, " features"]:
        """Boolean mask of the coordinates this map moves (``|omega-1|`` or ``|b|`` above threshold)."""
        bias = self.bias.abs().amax(0) if self.kind == "front" else self.bias.abs()
        return ((self.weight - 1).abs() > threshold) | (bias > threshold)

    def support_fraction(self, threshold: float = SUPPORT_THRESHOLD) -> float:
        """Share of coordinates this map moves."""
        return float(self.support(threshold).float().mean())

    def is_identity(self) -> bool:
        return bool(torch.all(self.weight == 1) and torch.all(self.bias == 0))


def support_by_site(maps: dict[str, AffineMap]) -> dict[str, float]:
    """Share of coordinates moved, per site."""
    return {site: m.support_fraction() for site, m in maps.items()}
