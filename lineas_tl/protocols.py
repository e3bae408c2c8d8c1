"""The steerer's public surface, as a typing ``Protocol``.

Modules the steerer calls into (calibration, saving, export, evaluation, the gate) take a
:class:`SteererLike` rather than importing :class:`~lineas_tl.steerer.HookedSteerer`, so the import
graph has no loop: ``steerer`` imports them, never the reverse. ``tools/import_cycles.py`` checks it.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any, Literal, Protocol, runtime_checkable

Strength = float | Mapping[str, float] | Literal["calibrated"]
"""A float for every site, ``{site: float}``, or ``"calibrated"``."""


@runtime_checkable
class SteererLike(Protocol):
    """What a fitted steerer exposes (a :class:`~lineas_tl.steerer.HookedSteerer` is one)."""

    model: Any
    runner: Any
    sites: list[str]
    pooling: str
    pool_bos: bool
    maps_: Mapping[str, Any]
    method_: str | None
    hparams_: dict[str, Any]
    history_: dict[str, Any]
    calibrated_strength_: float | None
    calibration_: Any

    def fwd_hooks(self, strength: Any = 1.0, *, inverse: bool = False, **kwargs: Any) -> list[tuple[str, Any]]: ...

    def steer(self, strength: Any = 1.0, *, inverse: bool = False, **kwargs: Any) -> AbstractContextManager[Any]: ...

    def generate(self, prompt: Any, strength: Any = 1.0, **kwargs: Any) -> Any: ...
