r"""Calibrated strength: the largest strength whose perplexity stays within a fluency budget.

Users ask how strong to steer; the same :math:`\lambda` costs very different fluency across
concepts and methods. :func:`calibrate` answers with a measurement: on texts the user gives (for
example held-out Wikipedia paragraphs, :func:`lineas_tl.concepts.reference_text`), it finds the
largest strength :math:`\lambda^\star \le` ``max_strength`` with

.. math::

    \text{PPL}(\lambda) \le (1 + \beta)\,\text{PPL}(0) \quad \text{for every grid strength }
    \lambda \le \lambda^\star

where :math:`\beta` is ``max_ppl_increase`` (0.05: at most 5% more perplexity than the unsteered
model). Search: a grid of ``grid + 1`` strengths from 0 to ``max_strength``, in increasing order,
stops at the first strength over the budget; the interval between the last strength within it and
that one is then bisected ``bisect_steps`` times. The result is always a strength that was
measured within the budget.

Monotonicity: perplexity usually grows with the strength, but need not (Linear-AcT without its
support mask was not monotone on SmolLM2). The search keeps the *first* crossing: a strength past
it that comes back under the budget is ignored, so every grid strength below the calibrated one is
within the budget too, and turning the strength down never leaves it. Between grid points the
bisection assumes a single crossing; the measured pairs are kept in ``evaluated`` for inspection.

Example:
    >>> steerer.calibrate(reference_text(n=32), max_ppl_increase=0.05)
    >>> steerer.calibrated_strength_
    >>> steerer.generate("The man said", strength="calibrated")
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from lineas_tl.validate import SteeringInputError, check_strength, check_strengths

if TYPE_CHECKING:
    from lineas_tl.protocols import SteererLike as HookedSteerer

CALIBRATED = "calibrated"
"""The strength value that means "the steerer's calibrated strength"."""


@dataclass(frozen=True)
class Calibration:
    """The result of :func:`calibrate`, saved with the steerer.

    Attributes:
        strength: the calibrated strength :math:`\\lambda^\\star`.
        max_ppl_increase: the budget :math:`\\beta`.
        base_perplexity: the unsteered model's perplexity on the texts.
        perplexity: the perplexity at ``strength`` (at most ``(1 + budget) * base_perplexity``).
        max_strength: the top of the search.
        inverse: whether the inverse map was calibrated.
        n_texts: how many texts were measured.
        evaluated: every ``(strength, perplexity)`` measured, in the order measured.
    """

    strength: float
    max_ppl_increase: float
    base_perplexity: float
    perplexity: float
    max_strength: float
    inverse: bool = False
    n_texts: int = 0
    evaluated: list[tuple[float, float]] = field(default_factory=list)

    @property
    def limit(self) -> float:
        """The perplexity budget in absolute terms, ``(1 + max_ppl_increase) * base_perplexity``."""
        return (1 + self.max_ppl_increase) * self.base_perplexity

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (what :mod:`lineas_tl.io` writes)."""
        out = asdict(self)
        out["evaluated"] = [[float(s), float(p)] for s, p in self.evaluated]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        """Rebuild from :meth:`to_dict`'s output; raises ValueError on a malformed record."""
        try:
            return cls(
                strength=float(data["strength"]),
                max_ppl_increase=float(data["max_ppl_increase"]),
                base_perplexity=float(data["base_perplexity"]),
                perplexity=float(data["perplexity"]),
                max_strength=float(data["max_strength"]),
                inverse=bool(data.get("inverse", False)),
                n_texts=int(data.get("n_texts", 0)),
                evaluated=[(float(s), float(p)) for s, p in data.get("evaluated", [])],
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"malformed calibration record ({err!r}); calibrate the steerer again") from err


def calibrate(
    steerer: HookedSteerer,
    texts: Sequence[str] | Any,
    max_ppl_increase: float = 0.05,
    *,
    max_strength: float = 1.0,
    grid: int = 8,
    bisect_steps: int = 4,
    inverse: bool = False,
    batch_size: int = 8,
    progress: bool = False,
) -> Calibration:
    """Find the largest strength within a perplexity budget on ``texts`` (see the module docstring).

    Args:
        steerer: a fitted :class:`~lineas_tl.HookedSteerer` on a language model.
        texts: the calibration texts (strings or token ids); at least one with two tokens.
        max_ppl_increase: the budget :math:`\\beta` (0.05 = +5% perplexity).
        max_strength: the largest strength considered (1 = the full map; 2 allows extrapolation).
        grid: grid intervals between 0 and ``max_strength``.
        bisect_steps: bisection steps after the grid (resolution ``max_strength / grid / 2**steps``).
        inverse: calibrate the inverse map (inducing the concept).
        batch_size: texts per forward pass.
        progress: show progress bars.

    Returns:
        the :class:`Calibration` (the steerer is not modified; :meth:`HookedSteerer.calibrate` stores it).

    Raises:
        ValueError: a negative or non-finite budget, ``max_strength`` <= 0, ``grid`` < 1,
            ``bisect_steps`` < 0, or no texts.
    """
    from lineas_tl.evaluate.perplexity import perplexity

    if not (math.isfinite(max_ppl_increase) and max_ppl_increase >= 0):
        raise ValueError(f"max_ppl_increase must be a finite number >= 0 (0.05 = +5%), got {max_ppl_increase}")
    if not (math.isfinite(max_strength) and max_strength > 0):
        raise ValueError(f"max_strength must be a positive number, got {max_strength}")
    if grid < 1 or bisect_steps < 0:
        raise ValueError(f"grid must be >= 1 and bisect_steps >= 0, got {grid} and {bisect_steps}")
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not a single string")
    texts = list(texts)
    if not texts:
        raise ValueError("no calibration texts: pass held-out text, e.g. lineas_tl.concepts.reference_text()")
    steerer._check_fitted()

    def ppl(strength: float) -> float:
        if strength == 0:
            return perplexity(steerer.model, texts, batch_size, progress=progress)
        return _steered_perplexity(steerer, texts, strength, inverse, batch_size, progress)

    base = ppl(0.0)
    strength, value, evaluated = search_strength(
        ppl, (1 + max_ppl_increase) * base, max_strength=max_strength, grid=grid, bisect_steps=bisect_steps
    )
    if getattr(steerer, "gate_", None) is not None and all(abs(p - base) <= 1e-6 * base for _, p in evaluated):
        warnings.warn(
            f"the gate stayed shut on these {len(texts)} texts (their perplexity is the same at every strength), "
            f"so the calibrated strength ({strength:g}, the top of the search) says nothing about the fluency of "
            "the text the gate does steer; judge that on the steered continuations (evaluate.compare's "
            "cont_ppl, frontier_summary(..., cont_budget=0.10))",
            UserWarning,
            stacklevel=3,
        )
    return Calibration(
        strength=strength, max_ppl_increase=float(max_ppl_increase), base_perplexity=base,
        perplexity=value if strength > 0 else base,
        max_strength=float(max_strength), inverse=inverse, n_texts=len(texts), evaluated=[(0.0, base), *evaluated],
    )  # fmt: skip


def search_strength(
    measure: Callable[[float], float],
    limit: float,
    *,
    max_strength: float = 1.0,
    grid: int = 8,
    bisect_steps: int = 4,
) -> tuple[float, float, list[tuple[float, float]]]:
    """The largest strength before ``measure`` first exceeds ``limit``: a grid, then bisection.

    ``measure(0)`` is taken to be within the limit and is not called. Returns the strength, its
    measured value (NaN for strength 0, which is not measured here) and every ``(strength, value)``
    measured, in order. A NaN value counts as over the limit.
    """
    evaluated: list[tuple[float, float]] = []

    def within(s: float) -> tuple[bool, float]:
        value = float(measure(s))
        evaluated.append((s, value))
        return value <= limit, value

    ok, ok_value, bad = 0.0, math.nan, None
    for k in range(1, grid + 1):
        s = max_strength * k / grid
        inside, value = within(s)
        if not inside:
            bad = s
            break
        ok, ok_value = s, value
    if bad is not None:
        for _ in range(bisect_steps):
            mid = (ok + bad) / 2
            inside, value = within(mid)
            if inside:
                ok, ok_value = mid, value
            else:
                bad = mid
    return ok, ok_value, evaluated


def _steered_perplexity(
    steerer: HookedSteerer, texts: list[Any], strength: float, inverse: bool, batch_size: int, progress: bool
) -> float:
    from lineas_tl.evaluate.perplexity import perplexity

    if not inverse:
        return perplexity(steerer.model, texts, batch_size, steerer, strength, progress=progress)
    with steerer.steer(strength, inverse=True):
        return perplexity(steerer.model, texts, batch_size, progress=progress)


def resolve_strength(steerer: HookedSteerer, strength: Any, inverse: bool = False) -> Any:
    """``strength`` with ``"calibrated"`` replaced by the steerer's calibrated strength.

    Raises:
        ValueError: ``"calibrated"`` on a steerer that was not calibrated (or was calibrated for
            the other direction of ``inverse``), or any other string; SteeringInputError: a strength
            (or a value of a ``{site: strength}`` dict) that is not a finite number.
    """
    if isinstance(strength, Mapping):
        return check_strengths(strength)
    if not isinstance(strength, str):
        return check_strength(strength)
    if strength != CALIBRATED:
        raise SteeringInputError(f"strength must be a number, {{site: number}} or 'calibrated', not {strength!r}")
    value = getattr(steerer, "calibrated_strength_", None)
    if value is None:
        raise SteeringInputError(
            "strength='calibrated' but this steerer has no calibrated strength: call "
            "steerer.calibrate(texts, max_ppl_increase=0.05) first (or load a steerer saved after calibrating)"
        )
    record = getattr(steerer, "calibration_", None)
    if record is not None and bool(record.inverse) != bool(inverse):
        done, asked = ("inverse" if record.inverse else "forward"), ("inverse" if inverse else "forward")
        raise SteeringInputError(
            f"the calibrated strength was found for the {done} map, not the {asked} one: calibrate "
            f"again with inverse={inverse}"
        )
    return float(value)


__all__ = ["CALIBRATED", "Calibration", "calibrate", "resolve_strength", "search_strength"]
