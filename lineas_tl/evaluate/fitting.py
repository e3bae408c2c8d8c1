"""Fit every method of a comparison on the same prompts, sites and pooling, gated variants included."""

from __future__ import annotations

import inspect
import time
from collections.abc import Mapping, Sequence
from typing import Any

from tqdm.auto import tqdm

from lineas_tl.evaluate.variants import GATE_SUFFIX, base_method, is_gated
from lineas_tl.methods import METHODS
from lineas_tl.steerer import HookedSteerer
from lineas_tl.validate import SteeringInputError


def check_method_names(methods: Sequence[str]) -> None:
    """Refuse unknown or repeated names (a name is a method or ``"<method>+gate"``)."""
    unknown = [m for m in methods if base_method(m) not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {sorted(METHODS)}, each optionally with "
                         f"{GATE_SUFFIX!r} (its gated variant)")  # fmt: skip
    if len(set(methods)) != len(methods):
        raise ValueError("`methods` lists a method twice")


def fit_methods(
    model: Any,
    source: list[str],
    target: list[str],
    methods: Sequence[str],
    method_kwargs: Mapping[str, Mapping[str, Any]],
    *,
    control: Sequence[str] | None = None,
    sites: Any = None,
    pooling: str = "mean",
    seed: int = 0,
    progress: bool = False,
) -> tuple[dict[str, HookedSteerer], dict[str, float]]:
    """Fit each method once with one steerer per method on the same sites and pooling.

    A name ``"<method>+gate"`` fits ``<method>`` with ``control=control`` and ``gate=True`` (its
    ``method_kwargs`` entry may override both). Returns the steerers and each fit's wall time in
    seconds, keyed by name. A method that takes a ``seed`` gets ``seed`` unless ``method_kwargs``
    sets it.
    """
    steerers: dict[str, HookedSteerer] = {}
    seconds: dict[str, float] = {}
    for name in tqdm(methods, desc="fit methods", disable=not progress):
        method, hparams = base_method(name), dict(method_kwargs.get(name, {}))
        if is_gated(name):
            if control is None and "control" not in hparams:
                raise SteeringInputError(
                    f"{name!r} is a gated variant: pass control= prompts (neutral text the steering should "
                    "leave alone, e.g. concept.control_prompts(n, seed)) to compare()"
                )
            hparams.setdefault("control", list(control or []))
            hparams.setdefault("gate", True)
        if "seed" in inspect.signature(METHODS[method]).parameters:
            hparams.setdefault("seed", seed)
        start = time.perf_counter()
        steerers[name] = HookedSteerer(model, sites, pooling=pooling).fit(  # type: ignore[arg-type]
            source, target, method=method, progress=progress, **hparams
        )
        seconds[name] = time.perf_counter() - start
    return steerers, seconds
