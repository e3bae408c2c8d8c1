"""What every fitting method receives and returns, and the registry that names them.

A method is a function ``fit(ctx: FitContext, **hyper_parameters) -> FitResult``. It may run the model
through ``ctx`` as often as it needs, and returns one map per site it steers: the same
:class:`~lineas_tl.maps.AffineMap` objects that ``steer()``, ``generate()``, ``save()`` and ``fold()``
accept, whatever the method.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from lineas_tl.collect import pool_prepared, pooled_forward
from lineas_tl.hooks import FitThenSteer
from lineas_tl.maps import AffineMap
from lineas_tl.pooling import Pooling
from lineas_tl.runner import Prepared, Runner, model_device


@dataclass
class FitResult:
    """The maps a method produced (``site -> AffineMap``) and what it measured while fitting."""

    maps: dict[str, AffineMap]
    history: dict[str, Any] = field(default_factory=dict)


@dataclass
class FitContext:
    """Everything a method needs: the model's runner, the prepared prompt sets, the sites.

    Attributes:
        runner: feeds the model (see :mod:`lineas_tl.runner`).
        source, target: the prepared source and target prompts.
        sites: canonical hook names to steer, in forward order.
        pooling: how a site's activation becomes one vector per prompt.
        batch_size: prompts per forward pass when collecting.
        progress: whether to show progress bars.
        source_raw, target_raw: the prompts as the user gave them (ActAdd needs them verbatim).
        control, control_weight, gate_options, fitted_gate: the control set and gate (see
            :mod:`lineas_tl.gate` and :mod:`lineas_tl.methods.control`).
    """

    runner: Runner
    source: Prepared
    target: Prepared
    sites: list[str]
    pooling: Pooling = "mean"
    batch_size: int = 32
    progress: bool = True
    source_raw: Any = None
    target_raw: Any = None
    control: Prepared | None = None
    """Prepared control prompts (``fit(..., control=...)``): neutral text steering should leave alone."""
    control_weight: float = 1.0
    gate_options: Any = None
    """:class:`~lineas_tl.gate.GateOptions` when ``fit(..., gate=True)``; a method that trains its own
    gate (LinEAS) sets ``fitted_gate``, the others are gated after fitting (two stages)."""
    fitted_gate: Any = None
    _shapes: dict[str, tuple[int, tuple[int, ...]]] = field(default_factory=dict)
    _devices: dict[str, torch.device] = field(default_factory=dict)

    @property
    def model(self) -> Any:
        return self.runner.model

    @property
    def device(self) -> torch.device:
        """The device of the model's first parameter; a map's own device is :meth:`site_device`."""
        return model_device(self.model)

    def _probe(self) -> None:
        # The pooled outputs stay on the device of the activation they were read from, so one
        # probe pass tells both each site's feature layout and where the model computes it.
        with torch.no_grad():
            pooled, self._shapes = pooled_forward(self.runner, self.source.batch([0]), self.sites, self.pooling)
        self._devices = {s: x.device for s, x in pooled.items()}

    def site_shapes(self) -> dict[str, tuple[int, tuple[int, ...]]]:
        """``site -> (feature_axis, feature_shape)``, read from one probe forward pass."""
        if not self._shapes:
            self._probe()
        return self._shapes

    def site_devices(self) -> dict[str, torch.device]:
        """``site -> device`` the model computes the site's activation on (a split model has several)."""
        if not self._devices:
            self._probe()
        return self._devices

    def site_device(self, site: str) -> torch.device:
        """The device of ``site``'s activation: where its map should live."""
        return self.site_devices()[site]

    def identity_maps(self, kind: str = "affine", sites: Sequence[str] | None = None) -> dict[str, AffineMap]:
        """Fresh identity maps for ``sites`` (all sites by default), each on its site's device."""
        shapes, devices = self.site_shapes(), self.site_devices()
        return {
            s: AffineMap(shapes[s][1], shapes[s][0], kind=kind, device=devices[s])
            for s in (sites if sites is not None else self.sites)
        }

    def pooled(
        self,
        which: str,
        sites: Sequence[str] | None = None,
        maps: Mapping[str, AffineMap] | None = None,
    ) -> dict[str, Float[Tensor, "n features"]]:
        """Pooled activations of every ``which`` (``"source"``/``"target"``) prompt, no gradient."""
        prepared = self.source if which == "source" else self.target
        sites = list(sites if sites is not None else self.sites)
        out = pool_prepared(self.runner, prepared, sites, self.pooling, maps, self.batch_size)
        return {s: x.flatten(1) for s, x in out.items()}

    def fit_each_site(
        self,
        maps: dict[str, AffineMap],
        fit_site: Callable[[str, Float[Tensor, "n features"]], None],
        incremental: bool = True,
    ) -> None:
        """Call ``fit_site(site, u)`` for every site in forward order; it sets ``maps[site]`` in place.

        ``u`` is the pooled source activations at ``site``. With ``incremental`` (AcT's way), they
        are read with the maps of every earlier site applied at strength 1: in one forward pass when
        every source prompt fits in one batch (``len(source) <= batch_size``), site by site
        otherwise (a pass over the source set per site, truncated after it). Without it, every
        ``u`` is read from the unsteered model in one pass.
        """
        if not incremental:
            source = self.pooled("source")
            for site in self.sites:
                fit_site(site, source[site])
            return
        n = len(self.source)
        if n <= self.batch_size:
            batch = self.source.batch(list(range(n)))

            def fit(site: str, u: Tensor) -> AffineMap:
                fit_site(site, u)
                return maps[site]

            hooks = [(s, FitThenSteer(s, self.runner, self.pooling, batch.mask, fit)) for s in self.sites]
            with torch.no_grad():
                self.runner.forward(batch, hooks, sites=list(self.sites))
            return
        for i, site in enumerate(tqdm(self.sites, desc="incremental fit", disable=not self.progress)):
            upstream = {s: maps[s] for s in self.sites[:i]}
            fit_site(site, self.pooled("source", sites=[site], maps=upstream)[site])


Method = Callable[..., FitResult]
METHODS: dict[str, Method] = {}


def register(name: str) -> Callable[[Method], Method]:
    """Register a fitting method under ``name`` (used as ``fit(..., method=name)``)."""

    def wrap(fn: Method) -> Method:
        METHODS[name] = fn
        return fn

    return wrap


@contextlib.contextmanager
def frozen(model: Any) -> Iterator[None]:
    """Freeze the model's parameters and put it in eval mode; restore both on exit."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    for p, _ in flags:
        p.requires_grad_(False)
    model.eval()
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)
