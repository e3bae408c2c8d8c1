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

Diffusion (:mod:`lineas_tl.diffusers`): the probes are fitted on spatially pooled activations of
the first denoising step (``pool_steps=0``), so the ``"prompt"`` driver gives **one gate per image
and site**, read at the trajectory's first UNet call (the spatial mean's logit, exactly what the
probe was fitted on) and kept for the later steps (:meth:`GateState.begin`, called by the runner);
with classifier-free guidance both halves take the conditional row's gate. After the first step it
costs nothing but the blend. ``"token"`` gates each spatial position at every step instead (the
probe read off the distribution it was fitted on, and a dot product per position and step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lineas_tl.gate.probe import SiteProbe
from lineas_tl.hooks import GenerationPositions, SteeringHook, _ShortRepr
from lineas_tl.pooling import to_features_last

Driver = Literal["token", "running", "prompt"]
SHARED = "<shared>"  # the cast of a shared gate, kept beside the prompt driver's per-site casts
DRIVERS: tuple[str, ...] = ("token", "running", "prompt")


def squash(logit: Tensor, hard: bool = False) -> Tensor:
    """A gate from a probe's logit: its probability, or (``hard``) 1 where the logit is at least 0, else 0."""
    return (logit >= 0).to(logit.dtype) if hard else torch.sigmoid(logit)


def features_last(act: Tensor, feature_axis: int, n_feat: int) -> tuple[Tensor, int, int]:
    """``(x, batch, n_pos)``: ``act`` with its feature axes last, its rows and its positions per row."""
    x = act if act.ndim == feature_axis + n_feat else to_features_last(act, feature_axis, n_feat)
    return x, x.shape[0], math.prod(x.shape[1 : x.ndim - n_feat])


def probe_logit(x: Tensor, probe: SiteProbe, batch: int, n_pos: int) -> tuple[Float[Tensor, "batch pos"], Tensor]:
    """``(a, e)``: the probe's logit at every position of ``x`` without its constant, and the constant."""
    d, e = probe.folded(x.device)
    return x.reshape(batch, n_pos, -1).float() @ d, e


@dataclass(repr=False)
class _Call:
    """What every site of one forward call shares: computed once per call, not once per site."""

    key: tuple[Any, ...]
    start: int
    counted: Tensor | None  # [batch, n_pos] bool; None: every position counted (a generated-only call)
    c: Tensor | None  # counted as float32
    prompt_w: Tensor | None  # [batch, n_pos] weights of the prompt's counted tokens; None: no prompt here
    prompt_n: Tensor | None  # their count per row


@dataclass(repr=False)
class GateState(_ShortRepr):
    """Per-row driver state shared by one set of gated hooks (one generation, or one forward pass).

    Args:
        tracker: the generation's position tracker (None outside generation).
        pool_mask: ``[batch, prompt_len]`` in generation (left-padded like the tokens) or
            ``[batch, pos]`` for a plain forward pass: 1 where a prompt token is counted. None:
            every real token counts (left padding, known from ``tracker``, never does).
        record: if a dict, every gated hook stores its gate values there (``site -> [batch, pos]``).
        hard: gates are 0 or 1 (a logit at least 0) instead of the probability.
        shared: ``[batch]`` one gate per row for every site (:mod:`lineas_tl.gate.shared`); each
            counted token takes its row's value, and no activation is read.

    Speed: the positions' bookkeeping (which tokens are counted, where the call starts) is done once
    per forward call and shared by every site; a probe's folded direction is cached
    (:meth:`SiteProbe.folded`); the ``"prompt"`` driver reads no activation once the prompt is read
    (its gate is a number per row, cast and shaped once); a call of generated tokens only skips the
    masking, which would multiply by one. The arithmetic is the same as computing everything afresh.
    """

    tracker: GenerationPositions | None = None
    pool_mask: Int[Tensor, "batch pos"] | None = None
    record: dict[str, Tensor] | None = None
    hard: bool = False
    shared: Float[Tensor, " batch"] | None = None
    _sums: dict[str, tuple[Tensor, Tensor, int]] = field(default_factory=dict)
    _prompt: dict[str, Tensor] = field(default_factory=dict)
    _prompt_cast: dict[str, tuple[Any, Tensor]] = field(default_factory=dict)
    _call: _Call | None = None
    freeze: bool = False
    """Keep each site's ``"prompt"`` gate of the first call for the later ones (a diffusion
    trajectory: the gate is read at the first denoising step, see :meth:`begin`)."""
    cond_rows: int | None = None
    """Images in the trajectory; a first call of twice as many rows is classifier-free guidance's
    ``[uncond, cond]`` batch, and both halves take the conditional rows' gate."""

    def begin(self, images: int | None = None) -> None:
        """Start a new diffusion trajectory: forget every gate kept, freeze the next ones."""
        self._sums.clear()
        self._prompt.clear()
        self._prompt_cast.clear()
        self._call = None
        self.freeze, self.cond_rows = True, images

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

    def _positions(self, batch: int, n_pos: int, device: torch.device, ordered: bool) -> _Call:
        """The call's :class:`_Call`, computed by its first gated site and reused by the others."""
        calls = self.tracker.calls if self.tracker is not None else None
        key = (calls, batch, n_pos, device, ordered)
        info = self._call
        if info is not None and info.key == key:
            return info
        tracked = self.tracker is not None
        start = self._start(n_pos)
        if tracked and start >= self.tracker.prompt_len:  # generated tokens only: all counted, no prompt
            info = _Call(key, start if ordered else 0, None, None, None, None)
        else:
            start, counted = self.counted(batch, n_pos, device)
            start = start if ordered else 0  # not [batch, pos, ...]: "running" is the image's raster order
            c = counted.float()
            w = c
            if tracked:
                w = c * (torch.arange(start, start + n_pos, device=device) < self.tracker.prompt_len)[None].float()
            info = _Call(key, start, counted, c, w, w.sum(1))
        self._call = info
        return info

    def gate(self, site: str, act: Tensor, probe: SiteProbe, driver: str, feature_axis: int, n_feat: int) -> Tensor:
        """Gate values for ``act``, shaped to broadcast against it (features axes of size 1)."""
        x, batch, n_pos = features_last(act, feature_axis, n_feat)
        call = self._positions(batch, n_pos, x.device, feature_axis == 2)
        if self.shared is not None:
            return self._shared(site, act, call, batch, n_pos, feature_axis, n_feat)
        if driver == "prompt" and (call.prompt_w is None or self.freeze) and site in self._prompt:
            if len(self._prompt[site]) == batch:
                return self._frozen(site, act, n_pos)  # the prompt was read before: no activation needed
        a, e = probe_logit(x, probe, batch, n_pos)
        if driver not in DRIVERS:
            raise ValueError(f"unknown gate driver {driver!r}; choose one of {DRIVERS}")
        if call.counted is not None:
            a = torch.where(call.counted, a, torch.zeros_like(a))
        if driver == "token":
            g = squash(a + e, self.hard)
            g = g if call.c is None else g * call.c
        elif driver == "running":
            g = self._running(site, call, a, e, batch, n_pos)
        elif call.prompt_w is None:  # "prompt", generated tokens, prompt never seen: not steered
            g = torch.zeros(batch, n_pos, dtype=a.dtype, device=a.device)
        else:  # "prompt", a call holding the prompt
            mean = (a * call.prompt_w).sum(1) / call.prompt_n.clamp_min(1)
            g_prompt = squash(mean + e, self.hard) * (call.prompt_n > 0).to(a.dtype)
            n = self.cond_rows
            if self.freeze and n is not None and batch == 2 * n:  # CFG: the conditional rows' gate
                g_prompt = g_prompt[n:].repeat(2)
            if self.tracker is not None or self.freeze:
                self._prompt[site] = g_prompt.detach()
                self._prompt_cast.pop(site, None)
            g = g_prompt[:, None] * call.c
        if self.record is not None:
            self.record[site] = g.detach().reshape(batch, n_pos).cpu()
        return g.to(act.dtype).reshape(self._shape(act, feature_axis, n_feat))

    def _shared(self, site: str, act: Tensor, call: _Call, batch: int, n_pos: int, feature_axis: int, n_feat: int) -> Tensor:
        """The shared gate: the row's value at every counted token (every generated one counts)."""
        shared = self.shared
        assert shared is not None
        if len(shared) != batch:
            raise ValueError(f"the shared gate has {len(shared)} rows, the batch {batch}; read it from this batch's prompts")
        if call.c is None:  # generated tokens only, all counted: the rows' values, one cast for every site
            return self._cast(site, SHARED, shared, act, n_pos)
        g = shared.to(device=act.device, dtype=torch.float32)[:, None] * call.c
        if self.record is not None:
            self.record[site] = g.detach().cpu()
        return g.to(act.dtype).reshape(self._shape(act, feature_axis, n_feat))

    @staticmethod
    def _shape(act: Tensor, feature_axis: int, n_feat: int) -> list[int]:
        shape = list(act.shape)
        shape[feature_axis : feature_axis + n_feat] = [1] * n_feat
        return shape

    def _frozen(self, site: str, act: Tensor, n_pos: int) -> Tensor:
        """The ``"prompt"`` gate of a generated-only call: the prompt's, ``[batch, 1, ..., 1]``."""
        return self._cast(site, site, self._prompt[site], act, n_pos)

    def _cast(self, site: str, name: str, g: Tensor, act: Tensor, n_pos: int) -> Tensor:
        """``g`` (one value per row) for every position of ``act``: ``[batch, 1, ..., 1]`` in its dtype
        and device, cast once under ``name`` and reused by later calls."""
        if self.record is not None:
            self.record[site] = g.detach()[:, None].expand(len(g), n_pos).cpu()
        cached = self._prompt_cast.get(name)
        key = (act.dtype, act.device, act.ndim)
        if cached is None or cached[0] != key:
            cached = (key, g.to(device=act.device, dtype=act.dtype).reshape(len(g), *[1] * (act.ndim - 1)))
            self._prompt_cast[name] = cached
        return cached[1]

    def _running(self, site: str, call: _Call, a: Tensor, e: Tensor, batch: int, n_pos: int) -> Tensor:
        s0, n0 = self._continue(site, call.start, batch, a)
        if call.c is None:  # generated tokens only: every one counted, so every count is at least 1
            if n_pos == 1:  # the KV cache's one new token
                sums, counts = s0[:, None] + a, n0[:, None] + 1.0
            else:
                counts = n0[:, None] + torch.arange(1, n_pos + 1, dtype=a.dtype, device=a.device)[None]
                sums = s0[:, None] + a.cumsum(1)
            if self.tracker is not None:
                self._sums[site] = (sums[:, -1].detach(), counts[:, -1].detach(), call.start + n_pos)
            return squash(sums / counts + e, self.hard)
        sums, counts = s0[:, None] + a.cumsum(1), n0[:, None] + call.c.cumsum(1)
        if self.tracker is not None:
            self._sums[site] = (sums[:, -1].detach(), counts[:, -1].detach(), call.start + n_pos)
        g = squash(sums / counts.clamp_min(1) + e, self.hard)
        return g * (call.c * (counts > 0).to(a.dtype))

    def _continue(self, site: str, start: int, batch: int, a: Tensor) -> tuple[Tensor, Tensor]:
        if start == 0:
            zeros = torch.zeros(batch, dtype=a.dtype, device=a.device)
            return zeros, zeros
        saved = self._sums.get(site)
        if saved is None or saved[2] != start:
            raise RuntimeError(
                f"gate state at {site!r} is out of step (a call starts at position {start}, the state "
                f"ends at {saved[2] if saved else 0}); use one GateState per generation"
            )
        return saved[0], saved[1]  # kept on the device of the site's activations


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
        return (self.probe.active or self.state.shared is not None) and self.steer.strength != 0

    @property
    def skips(self) -> bool:
        """An inactive site leaves every activation unchanged: the runners do not attach it at all.
        Under a shared gate every site with a map is steered."""
        return not (self.probe.active or self.state.shared is not None) or self.steer.skips

    def __call__(self, act: Tensor, *, hook: Any) -> Tensor:
        m = self.steer.map_
        if not self.active:
            if self.state.record is not None:
                self.state.record[self.site] = torch.zeros(act.shape[0], act.shape[1] if act.ndim > 1 else 1)
            return act
        g = self.state.gate(self.site, act, self.probe, self.driver, m.feature_axis, len(m.feature_shape))
        return act + g * (self.steer(act, hook=hook) - act)


def begin_trajectory(hooks: Any, images: int | None = None) -> None:
    """Tell the gated hooks among ``hooks`` (``(site, hook)`` pairs) that a diffusion trajectory
    starts: each :class:`GateState` forgets what it kept and freezes its ``"prompt"`` gates at the
    first UNet call (see :meth:`GateState.begin`). Hooks of other kinds are left alone."""
    seen: set[int] = set()
    for _, fn in hooks:
        for h in (fn, getattr(fn, "steer", None)):  # a gated hook, or a recorder steering through one
            state = getattr(h, "state", None)
            if isinstance(state, GateState) and id(state) not in seen:
                seen.add(id(state))
                state.begin(images)


def site_gate_values(state: GateState) -> dict[str, Float[Tensor, "batch pos"]]:
    """What the hooks recorded (``record`` must have been a dict)."""
    return dict(state.record or {})
