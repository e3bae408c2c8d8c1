r"""LinEAS with a control set: the maps (and, gated, the probes) trained with a term that keeps
neutral text where the unsteered model puts it.

With control prompts :math:`C` (``fit(..., control=...)``) the LinEAS loss becomes

.. math::

    \mathcal{L} = \frac{1}{L}\sum_l \sum_j W_2^2\big((U_l)_{:,j}, (V_l)_{:,j}\big)
      + \kappa\, \frac{1}{L}\sum_l \sum_j \frac{1}{|B|}\sum_{i \in B} \big(\tilde U^C_{l,ij} - V^C_{l,ij}\big)^2

where :math:`\tilde U^C_l` is the steered (and gated) model's pooled activation of control prompt
:math:`i` at site :math:`l` and :math:`V^C_l` the unsteered model's, pooled the same way, on a
minibatch :math:`B` of control prompts; :math:`\kappa` is ``control_weight``. The pairs are the
same prompts, so the term is a plain squared distance, in the same units as the transport term.
Under an SGD preset (the default at norm outputs, ``"paper_short"``) the step grows with
:math:`\kappa`: a weight far above 1 needs a smaller ``lr``.

Gated (``gate=True``), the source activations are read through the gated maps
(:math:`z + g\,(T(z) - z)`), and the probes' weights are trained with the maps: the transport term
pulls the gate open on the source, the control term pushes it shut on the control set. The probes
start from the two-stage fit (:func:`~lineas_tl.gate.gate.fit_gate`; ``gate={"train_probes": False}``
keeps them there and trains only the maps, through them; ``gate={"end_to_end": False}`` fits the
maps without the control term and the probes after them, as for the baselines); a site whose
held-out accuracy is below the threshold stays off.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lineas_tl.collect import pool_prepared
from lineas_tl.gate.gate import Gate, fit_gate
from lineas_tl.hooks import PoolingRecorder, SteeringHook
from lineas_tl.maps import AffineMap


class ControlTerm:
    """The control term (and the gate) of one LinEAS fit; see the module docstring."""

    def __init__(self, ctx: Any, maps: dict[str, AffineMap], batch_size: int, seed: int = 0):
        self.ctx, self.maps = ctx, maps
        self.weight = float(getattr(ctx, "control_weight", 1.0))
        options = getattr(ctx, "gate_options", None)
        self.gate: Gate | None = fit_gate(ctx, list(maps), options) if options is not None else None
        if self.gate is not None and options.train_probes:
            for site in self.gate.active_sites:
                self.gate.probes[site].requires_grad_(True)
            self.gate.trained = True
        ref = pool_prepared(ctx.runner, ctx.control, ctx.sites, ctx.pooling, None, ctx.batch_size)
        self.reference = {s: x.flatten(1) for s, x in ref.items()}
        self.batch_size = min(batch_size, len(ctx.control))
        self.gen = torch.Generator().manual_seed(seed + 1)
        self.values: list[float] = []

    @property
    def params(self) -> list[Tensor]:
        return self.gate.parameters() if self.gate is not None and self.gate.trained else []

    def _forward(self, prepared: Any, idx: list[int]) -> dict[str, Tensor]:
        ctx = self.ctx
        batch = prepared.batch(idx)
        store: dict[str, Tensor] = {}
        steer = [(s, SteeringHook(m)) for s, m in self.maps.items()]
        if self.gate is not None:
            steer = self.gate.wrap(steer, pool_mask=batch.mask)
        by_site = dict(steer)
        hooks: list[tuple[str, Any]] = [
            (s, PoolingRecorder(s, ctx.runner, ctx.pooling, batch.mask, store, by_site.get(s), detach=False))
            for s in ctx.sites
        ]
        hooks += [(s, h) for s, h in steer if s not in set(ctx.sites)]
        ctx.runner.forward(batch, hooks, sites=list(dict.fromkeys([*ctx.sites, *self.maps])))
        return store

    def source(self, idx: list[int]) -> tuple[dict[str, Tensor], None]:
        """The source minibatch's pooled activations through the (gated) maps, with gradient."""
        return self._forward(self.ctx.source, idx), None

    def loss(self) -> Tensor:
        """``control_weight`` times the mean over sites of the summed per-coordinate squared distance."""
        idx = torch.randperm(len(self.ctx.control), generator=self.gen)[: self.batch_size].tolist()
        steered = self._forward(self.ctx.control, idx)
        terms = []
        for site, u in steered.items():
            v = self.reference[site][torch.as_tensor(idx, device=self.reference[site].device)] if self.ctx.pooling != "all" else None
            if v is None:  # one row per token: recompute the unsteered rows of this minibatch
                return self._loss_all_tokens(idx, steered)
            terms.append((u.flatten(1) - v.to(u.device)).pow(2).mean(0).sum())
        first = terms[0].device
        value = torch.stack([t.to(first) for t in terms]).mean() * self.weight
        self.values.append(float(value.detach()))
        return value

    def _loss_all_tokens(self, idx: list[int], steered: dict[str, Tensor]) -> Tensor:
        from lineas_tl.collect import pooled_forward

        with torch.no_grad():
            plain, _ = pooled_forward(self.ctx.runner, self.ctx.control.batch(idx), self.ctx.sites, self.ctx.pooling)
        terms = [(steered[s].flatten(1) - plain[s].flatten(1).to(steered[s].device)).pow(2).mean(0).sum() for s in steered]
        value = torch.stack([t.to(terms[0].device) for t in terms]).mean() * self.weight
        self.values.append(float(value.detach()))
        return value

    def finish(self) -> dict[str, Any]:
        """Freeze the gate, hand it to the steerer (``ctx.fitted_gate``), and summarise for the history."""
        out: dict[str, Any] = {"control_weight": self.weight, "control_loss": list(self.values)}
        if self.gate is not None:
            self.gate.requires_grad_(False)
            self.ctx.fitted_gate = self.gate
        return out


def control_term(ctx: Any, maps: dict[str, AffineMap], batch_size: int, seed: int = 0) -> ControlTerm | None:
    """The control term of a LinEAS fit, or None when ``ctx`` has no control prompts or its gate
    is fitted in two stages (``gate={"end_to_end": False}``: the maps see no control prompts)."""
    options = getattr(ctx, "gate_options", None)
    if getattr(ctx, "control", None) is None or (options is not None and not options.end_to_end):
        return None
    return ControlTerm(ctx, maps, batch_size, seed)
