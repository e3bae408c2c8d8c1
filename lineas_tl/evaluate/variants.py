"""Method names in a comparison: a method of :data:`lineas_tl.methods.METHODS`, or its gated variant.

``"<method>+gate"`` (e.g. ``"lineas+gate"``) is the same method fitted with ``control=`` prompts and
``gate=True`` (:mod:`lineas_tl.gate`): a row of its own in :func:`~lineas_tl.evaluate.compare`'s
table, next to the ungated method.
"""

from __future__ import annotations

GATE_SUFFIX = "+gate"


def base_method(name: str) -> str:
    """The fitting method of a comparison row's name: ``"iti+gate"`` -> ``"iti"``."""
    return name.removesuffix(GATE_SUFFIX)


def is_gated(name: str) -> bool:
    """Whether a comparison row's name asks for the gated variant."""
    return name.endswith(GATE_SUFFIX)
