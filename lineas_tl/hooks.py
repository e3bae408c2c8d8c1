"""The hook functions: the one object that applies a map, in fitting and in generation alike.

``SteeringHook`` is attached to a site's ``HookPoint`` (signature ``(act, *, hook)``); it applies its
:class:`~lineas_tl.maps.AffineMap` at a strength, optionally inverted, optionally on some token
positions only. ``PoolingRecorder`` pools what flows through a site (after any steering) so the
collector and the fitting loop read exactly what the next layer receives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Int
from torch import Tensor

from lineas_tl.maps import AffineMap
from lineas_tl.pooling import BatchPooler, Pooling, pool

Positions = Literal["all", "prompt", "generated"]
POSITIONS: tuple[str, ...] = ("all", "prompt", "generated")


class _ShortRepr:
    """A repr that formats no tensor. TransformerLens' ``add_hook`` takes every hook's repr each
    time it is attached (every forward call of a fit); a dataclass repr printed the padding mask,
    a tenth of each LinEAS step on SmolLM2 under cProfile."""

    def __repr__(self) -> str:
        site = getattr(self, "site", None)
        return f"{type(self).__name__}({site!r})" if site is not None else f"{type(self).__name__}()"


@dataclass(repr=False)
class GenerationPositions(_ShortRepr):
    """Tells a hook which positions of the current forward call are prompt and which are generated.

    A generation loop calls the model once per new token. Call ``k`` (0-based) covers the last
    ``L_k`` positions of a sequence of total length ``prompt_len + k``: all of it without a KV cache,
    one position with it. So the call starts at ``prompt_len + k - L_k``, which is exact in both
    modes; ``calls`` is advanced by a forward pre-hook on the model.
    """

    prompt_len: int
    calls: int = -1
    left_pad: Int[Tensor, " batch"] | None = None
    """Padding positions at the start of each row of a left-padded batch (None: no padding)."""

    def on_forward(self, *_: Any, **__: Any) -> None:
        self.calls += 1

    def generated_mask(self, n_pos: int, device: torch.device) -> Tensor:
        start = self.prompt_len + max(self.calls, 0) - n_pos
        return torch.arange(start, start + n_pos, device=device) >= self.prompt_len

    def prompt_positions(self, n_pos: int, device: torch.device) -> Int[Tensor, "batch pos"]:
        """Each position's index in its own prompt (0 = first real token; negative on left padding)."""
        start = self.prompt_len + max(self.calls, 0) - n_pos
        index = torch.arange(start, start + n_pos, device=device)[None]
        return index if self.left_pad is None else index - self.left_pad.to(device)[:, None]


@dataclass(repr=False)
class SteeringHook(_ShortRepr):
    """Applies ``map_`` to a site's output: ``T^strength`` (or its inverse) on the chosen positions.

    ``positions`` other than ``"all"`` need ``tracker`` (set by :meth:`HookedSteerer.generate`) and
    activations laid out ``[batch, pos, ...]``. A ``kind="front"`` map (ActAdd) is told each
    position's index in its prompt: from ``tracker`` in generation (so with the KV cache only the
    first call, which holds the prompt, is touched, and left padding is skipped), else ``0, 1, ...``
    (a plain forward pass on right-padded or single sequences).

    In inference (a frozen map, or no autograd) the map is one fused multiply-add with the strength
    folded in, ``scale = 1 + strength (omega - 1)``, ``shift = strength b`` (the inverse likewise),
    computed on the first call and kept; a fit (trainable map under autograd) runs the map itself,
    differentiably. A hook at strength 0 reports :attr:`skips`, and the runner does not attach it.
    """

    map_: AffineMap
    strength: float = 1.0
    inverse: bool = False
    positions: Positions = "all"
    tracker: GenerationPositions | None = None
    _key: tuple[Any, ...] | None = field(default=None, init=False, repr=False, compare=False)
    _coef: tuple[Tensor, Tensor] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def skips(self) -> bool:
        """Whether this hook leaves every activation unchanged (strength 0): it need not be attached."""
        return not isinstance(self.strength, Tensor) and self.strength == 0

    def __call__(self, act: Tensor, *, hook: Any) -> Tensor:
        if self.strength == 0:
            return act  # bit-identical to the unsteered model, whatever the map holds
        coef = self._folded(act)
        if coef is not None:  # inference: one fused multiply-add, the strength folded in once
            steered = torch.addcmul(coef[1], act, coef[0])
        else:
            where = None
            if self.map_.kind == "front":  # ActAdd: rows of b go to the prompt's first positions
                n_pos = act.shape[1]
                where = self.tracker.prompt_positions(n_pos, act.device) if self.tracker else torch.arange(n_pos)
            steered = self.map_(act, self.strength, self.inverse, where)
        if self.positions == "all" or self.tracker is None:
            return steered
        gen = self.tracker.generated_mask(act.shape[1], act.device)
        keep = gen if self.positions == "generated" else ~gen
        keep = keep.reshape(1, -1, *[1] * (act.ndim - 2))
        return torch.where(keep, steered, act)

    def _folded(self, act: Tensor) -> tuple[Tensor, Tensor] | None:
        """``(scale, shift)`` with the strength folded in, cast and shaped for ``act``, computed once
        per hook (again only if the map's tensors change in place, or ``act``'s dtype or device
        changes); None where the map must run itself: a trainable map under autograd (a fit), a
        parametrised one, a support range, ActAdd's front positions."""
        m = self.map_
        w, b = m._parameters.get("weight"), m._parameters.get("bias")  # None while parametrised
        if w is None or b is None or m.lo is not None or m.kind == "front":
            return None
        if (w.requires_grad or b.requires_grad) and torch.is_grad_enabled():
            return None
        key = (w._version, b._version, act.dtype, act.device, act.ndim)
        if key != self._key:
            with torch.no_grad():
                scale, shift = m.coefficients(self.strength, self.inverse)
                self._coef = (m._broadcast(scale, act).contiguous(), m._broadcast(shift, act).contiguous())
            self._key = key
        return self._coef


@dataclass(repr=False)
class PoolingRecorder(_ShortRepr):
    """Pools the activation flowing through a site (after ``steer``, when given) into ``store``."""

    site: str
    runner: Any
    how: Pooling
    mask: Int[Tensor, "batch pos"] | None
    store: dict[str, Tensor]
    steer: SteeringHook | None = None
    detach: bool = True
    shapes: dict[str, tuple[int, tuple[int, ...]]] = field(default_factory=dict)
    pooler: BatchPooler | None = None
    """Shared by the recorders of one forward pass (the mask work done once); None: :func:`pool`."""
    check: bool = True
    """Raise at once on NaN or inf (a device sync per site); the caller may check all sites at the end."""

    def __call__(self, act: Tensor, *, hook: Any) -> Tensor:
        if self.steer is not None:
            act = self.steer(act, hook=hook)
        axis, shape = self.runner.features(self.site, act)
        self.shapes[self.site] = (axis, shape)
        x = act.detach() if self.detach else act
        pooled = self.pooler(x, shape, axis) if self.pooler is not None else pool(x, shape, axis, self.mask, self.how)
        if self.check and not torch.isfinite(pooled).all():
            raise non_finite(self.site)
        self.store[self.site] = pooled.float()
        return act


def non_finite(site: str) -> FloatingPointError:
    """The error for NaN or inf in the activations at ``site``."""
    return FloatingPointError(
        f"NaN or inf in the activations at site {site!r}. Check the inputs, use float32 "
        "instead of float16 (overflow), or lower the learning rate / strength if a map diverged."
    )


@dataclass(repr=False)
class FitThenSteer(_ShortRepr):
    """Pools the activation reaching a site, asks ``fit`` for the site's map, and applies it.

    With every prompt of a set in one batch, these hooks fit an incremental method (each site on
    activations already moved by the maps fitted upstream) in a single forward pass: site ``l``'s
    map is fitted before the activations flow on to site ``l + 1``. ``fit(site, pooled)`` receives
    ``[batch, n_features]`` float32 and returns the fitted map.
    """

    site: str
    runner: Any
    how: Pooling
    mask: Int[Tensor, "batch pos"] | None
    fit: Callable[[str, Tensor], AffineMap]

    def __call__(self, act: Tensor, *, hook: Any) -> Tensor:
        axis, shape = self.runner.features(self.site, act)
        pooled = pool(act.detach(), shape, axis, self.mask, self.how).float().flatten(1)
        return SteeringHook(self.fit(self.site, pooled))(act, hook=hook)
