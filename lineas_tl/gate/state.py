r"""Which activation drives the gate, token by token, exactly with and without the KV cache.

At a gated site the map becomes :math:`z + \lambda\, g_t\, (T(z_t) - z_t)` with
:math:`g_t = p(x_t)` (the site's probe, :mod:`lineas_tl.gate.probe`), where the *driver*
:math:`x_t` is

- ``"token"``: the token's own activation, :math:`x_t = z_t`;
- ``"running"``: the causal running mean of the counted tokens so far, :math:`x_t = \frac{1}{|C_t|}\sum_{s \in C_t} z_s`;
- ``"prompt"``: the mean of the prompt's counted tokens, frozen once the prompt is read (every
  prompt token and every generated token gets the same gate).

*Counted* tokens are the ones the fit's pooling reads: a leading BOS, left padding and (for
conversations) the chat scaffolding are not counted, and every generated token is. A token that is
not counted is not steered (:math:`g = 0`); so is a ``"running"`` token before any counted one.

Because the probe's logit is affine, the logit of a mean is the mean of the logits, so the state a
generation carries per site and row is two numbers: the running sum of counted logits and their
count, up to the last position seen. In generation (a ``tracker`` is given) a forward call covers
the absolute positions ``[start, start + n_pos)`` (the whole sequence without the KV cache, one new
token with it): a call starting at 0 recomputes from scratch, a later call continues the state
where the previous call ended. Both paths sum the same logits, so cached and uncached generation
agree. Outside generation (``steer()``, fitting, :func:`~lineas_tl.gate.inspect.gates`) each
forward call is a whole sequence and no state is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lineas_tl.gate.probe import SiteProbe
from lineas_tl.hooks import GenerationPositions, SteeringHook, _ShortRepr
from lineas_tl.pooling import to_features_last

Driver = Literal["token", "running", "prompt"]
DRIVERS: tuple[str, ...] = ("token", "running", "prompt")


@dataclass(repr=False)
class GateState(_ShortRepr):
    """Per-row driver state shared by one set of gated hooks (one generation, or one forward pass).

    Args:
        tracker: the generation's position tracker (None outside generation).
        pool_mask: ``[batch, prompt_len]`` in generation (left-padded like the tokens) or
            ``[batch, pos]`` for a plain forward pass: 1 where a prompt token is counted. None:
            every real token counts (left padding, known from ``tracker``, never does).
        record: if a dict, every gated hook stores its gate values there (``site -> [batch, pos]``).
    """

    tracker: GenerationPositions | None = None
    pool_mask: Int[Tensor, "batch pos"] | None = None
    record: dict[str, Tensor] | None = None
    _sums: dict[str, tuple[Tensor, Tensor, int]] = field(default_factory=dict)
    _prompt: dict[str, Tensor] = field(default_factory=dict)

    def _start(self, n_pos: int) -> int:
        if self.tracker is None:
            return 0
        return self.tracker.prompt_len + max(self.tracker.calls, 0) - n_pos

    def counted(self, batch: int, n_pos: int, device: torch.device) -> tuple[int, Tensor]:
        """``(start, [batch, n_pos] bool)``: the call's first absolute position, and the counted tokens."""
        start = self._start(n_pos)
        if self.tracker is None:
            m = self.pool_mask
            if m is not None and tuple(m.shape) == (batch, n_pos):
                return 0, m.to(device).bool()
            return 0, torch.ones(batch, n_pos, dtype=torch.bool, device=device)
        pos = torch.arange(start, start + n_pos, device=device)
        in_prompt = pos < self.tracker.prompt_len
        if self.pool_mask is not None:
            prompt_counted = self.pool_mask.to(device).bool()[:, pos.clamp(max=self.tracker.prompt_len - 1)]
        else:
            prompt_counted = self.tracker.prompt_positions(n_pos, device) >= 0
            prompt_counted = prompt_counted.expand(batch, n_pos)
        return start, torch.where(in_prompt[None], prompt_counted, torch.ones_like(prompt_counted))

    def gate(self, site: str, act: Tensor, probe: SiteProbe, driver: str, feature_axis: int, n_feat: int) -> Tensor:
        """Gate values for ``act``, shaped to broadcast against it (features axes of size 1)."""
        x = to_features_last(act, feature_axis, n_feat)
        lead = x.shape[: x.ndim - n_feat]
        x = x.reshape(lead[0], -1, *x.shape[x.ndim - n_feat:]).flatten(2)  # [batch, positions, F]
        batch, n_pos = x.shape[:2]
        d, e = probe.direction()
        a = x.float() @ d.to(x.device)  # [batch, pos]: the logit without its constant
        start, counted = self.counted(batch, n_pos, x.device)
        if feature_axis != 2:  # not [batch, pos, ...]: no token order; "running" is the image's raster order
            start = 0
        a = torch.where(counted, a, torch.zeros_like(a))
        c = counted.to(a.dtype)
        if driver == "token":
            g = torch.sigmoid(a + e.to(a.device)) * c
        elif driver == "running":
            s0, n0 = self._continue(site, start, batch, a)
            sums, counts = s0[:, None] + a.cumsum(1), n0[:, None] + c.cumsum(1)
            if self.tracker is not None:
                self._sums[site] = (sums[:, -1].detach(), counts[:, -1].detach(), start + n_pos)
            mean = sums / counts.clamp_min(1)
            g = torch.sigmoid(mean + e.to(a.device)) * (c * (counts > 0).to(a.dtype))
        elif driver == "prompt":
            g_prompt = self._prompt_gate(site, start, a, c, e, n_pos)
            g = g_prompt[:, None] * c
        else:
            raise ValueError(f"unknown gate driver {driver!r}; choose one of {DRIVERS}")
        if self.record is not None:
            self.record[site] = g.detach().reshape(batch, n_pos).cpu()
        shape = list(act.shape)
        for i in range(feature_axis, feature_axis + n_feat):
            shape[i] = 1
        return g.to(act.dtype).reshape(shape)

    def _continue(self, site: str, start: int, batch: int, a: Tensor) -> tuple[Tensor, Tensor]:
        zeros = torch.zeros(batch, dtype=a.dtype, device=a.device)
        if start == 0:
            return zeros, zeros
        saved = self._sums.get(site)
        if saved is None or saved[2] != start:
            raise RuntimeError(
                f"gate state at {site!r} is out of step (a call starts at position {start}, the state "
                f"ends at {saved[2] if saved else 0}); use one GateState per generation"
            )
        return saved[0].to(a.device), saved[1].to(a.device)

    def _prompt_gate(self, site: str, start: int, a: Tensor, c: Tensor, e: Tensor, n_pos: int) -> Tensor:
        if start > 0 and self.tracker is not None and site in self._prompt:  # the prompt was read before
            return self._prompt[site].to(a.device)
        in_prompt = torch.ones(n_pos, dtype=torch.bool, device=a.device)
        if self.tracker is not None:
            in_prompt = torch.arange(start, start + n_pos, device=a.device) < self.tracker.prompt_len
        w = c * in_prompt[None].to(c.dtype)
        mean = (a * w).sum(1) / w.sum(1).clamp_min(1)
        g = torch.sigmoid(mean + e.to(a.device)) * (w.sum(1) > 0).to(a.dtype)
        if self.tracker is not None:
            self._prompt[site] = g.detach()
        return g


@dataclass(repr=False)
class GatedSteeringHook(_ShortRepr):
    r"""Applies ``steer`` (a :class:`~lineas_tl.hooks.SteeringHook`) scaled per token by the gate.

    ``out = act + g * (steer(act) - act)``: with the map's own :math:`T^\lambda(z) - z =
    \lambda (T(z) - z)` that is :math:`z + \lambda g (T(z) - z)`. An inactive site (probe below the
    threshold) and strength 0 return ``act`` unchanged.
    """

    site: str
    steer: SteeringHook
    probe: SiteProbe
    driver: str
    state: GateState

    @property
    def strength(self) -> float:
        return self.steer.strength

    @property
    def active(self) -> bool:
        return self.probe.active and self.steer.strength != 0

    def __call__(self, act: Tensor, *, hook: Any) -> Tensor:
        m = self.steer.map_
        if not self.active:
            if self.state.record is not None:
                self.state.record[self.site] = torch.zeros(act.shape[0], act.shape[1] if act.ndim > 1 else 1)
            return act
        g = self.state.gate(self.site, act, self.probe, self.driver, m.feature_axis, len(m.feature_shape))
        return act + g * (self.steer(act, hook=hook) - act)


def site_gate_values(state: GateState) -> dict[str, Float[Tensor, "batch pos"]]:
    """What the hooks recorded (``record`` must have been a dict)."""
    return dict(state.record or {})
