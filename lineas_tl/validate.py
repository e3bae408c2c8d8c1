"""Checks on what users pass in: strengths, hyper-parameters, prompt sets.

Every check raises :class:`SteeringInputError` (a ``ValueError``) whose message names the argument,
what was wrong with it and what to pass instead, before any tensor is touched: a NaN strength would
otherwise make every logit NaN and generation return the prompt with nothing added; a blank prompt
set would fit and then steer towards blank text.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

MIN_DISTRIBUTION_PROMPTS = 4
"""Fewest prompts per set for a distributional fit (LinEAS, Linear-AcT). The authors' code refuses
batches under 4; a 1-D transport between one or two samples per coordinate matches points, not
distributions."""


class SteeringInputError(ValueError):
    """A bad argument to the public API; the message says what to pass instead."""


def check_strength(value: Any, name: str = "strength") -> float:
    """``value`` as a finite float, else :class:`SteeringInputError`."""
    try:
        if isinstance(value, (bool, str, bytes)):
            raise TypeError
        value = float(value)  # numbers, NumPy scalars, 0-d tensors
    except (TypeError, ValueError, RuntimeError):
        raise SteeringInputError(
            f"{name} must be a number (e.g. 0.5; 0 = unsteered, 1 = the fitted map), a {{site: number}} "
            f"dict or 'calibrated', not {value!r}"
        ) from None
    if not math.isfinite(value):
        raise SteeringInputError(
            f"{name} is {value}: it must be finite (0 = unsteered, 1 = the fitted map, above 1 "
            "extrapolates); a NaN or infinite strength would make every activation NaN"
        )
    return value


def check_strengths(values: Mapping[str, Any], name: str = "strength") -> dict[str, float]:
    """Each value of a ``{site: strength}`` dict checked with :func:`check_strength`."""
    return {site: check_strength(v, f"{name}[{site!r}]") for site, v in values.items()}


def check_number(
    name: str, value: Any, *, minimum: float | None = None, positive: bool = False, integer: bool = False
) -> Any:
    """``value`` if it is a finite number (an ``int`` when ``integer``), ``> 0`` when ``positive``
    and ``>= minimum`` when given; else :class:`SteeringInputError`."""
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, numbers.Integral) if integer else isinstance(value, numbers.Real)
    if isinstance(value, bool) or not ok_type:
        raise SteeringInputError(f"{name} must be {kind}, not {value!r}")
    if not math.isfinite(float(value)):
        raise SteeringInputError(f"{name} must be finite, not {value}")
    if positive and not value > 0:
        raise SteeringInputError(f"{name} must be > 0, not {value}")
    if minimum is not None and value < minimum:
        raise SteeringInputError(f"{name} must be >= {minimum}, not {value}")
    return value


def _is_blank(prompt: Any) -> bool:
    if isinstance(prompt, str):
        return not prompt.strip()
    if isinstance(prompt, Sequence) and prompt and all(isinstance(m, Mapping) for m in prompt):
        return all(not str(m.get("content", "")).strip() for m in prompt)  # a conversation
    if isinstance(prompt, Sequence):
        return len(prompt) == 0  # token ids
    return False


def check_prompts(prompts: Any, role: str, *, minimum: int = 1, method: str | None = None) -> None:
    """Refuse an empty prompt set, blank prompts, or fewer than ``minimum`` prompts.

    Args:
        prompts: a sequence of prompts (strings, conversations or token-id lists), or a tensor of
            token ids ``[batch, pos]``.
        role: ``"source"``, ``"target"`` or ``"control"``, for the message.
        minimum: fewest prompts accepted.
        method: the fitting method, for the message.
    """
    if isinstance(prompts, str):
        raise SteeringInputError(
            f"{role} prompts must be a list of prompts, not one string: wrap it as [{prompts[:40]!r}]"
        )
    n = len(prompts) if hasattr(prompts, "__len__") else None
    if n == 0:
        raise SteeringInputError(f"the {role} prompt set is empty: give at least {minimum} prompt(s)")
    if n is not None and n < minimum:
        who = f"{method} " if method else ""
        raise SteeringInputError(
            f"{who}needs at least {minimum} {role} prompts for a distributional fit, got {n}: give "
            f"more (the paper uses 32), or use method='mean_act' with a handful"
        )
    if isinstance(prompts, Sequence):
        blank = [i for i, p in enumerate(prompts) if _is_blank(p)]
        if blank:
            raise SteeringInputError(
                f"{len(blank)} of the {n} {role} prompts are empty or blank (indices {blank[:8]}): "
                "remove them; a blank prompt has no tokens to pool, and a blank set would steer "
                "towards blank text"
            )


__all__ = [
    "MIN_DISTRIBUTION_PROMPTS",
    "SteeringInputError",
    "check_number",
    "check_prompts",
    "check_strength",
    "check_strengths",
]
