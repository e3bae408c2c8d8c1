"""Write a steered model for serving: a GGUF with the steering folded in, a llama.cpp control vector,
or a Hugging Face directory. One module per format:

- :mod:`~lineas_tl.export.gguf_model`: ``format="gguf"``, for llama.cpp, Ollama, LM Studio;
- :mod:`~lineas_tl.export.control_vector`: ``format="control-vector"``, additive steerers only;
- :mod:`~lineas_tl.export.hf`: ``format="hf"``, loadable by stock ``transformers``.

Example:
    >>> steerer.export("smollm2-detox.gguf", format="gguf", strength=0.8)
    >>> steerer.export("detox-cvec.gguf", format="control-vector")   # Mean-AcT/ActAdd at mlp_out
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lineas_tl.export.common import ExportError

__all__ = ["FORMATS", "ExportError", "export"]

FORMATS: tuple[str, ...] = ("gguf", "control-vector", "hf")


def export(
    steerer: Any,
    path: str | os.PathLike[str],
    format: str = "gguf",
    strength: float | str | Mapping[str, float] = 1.0,
    *,
    inverse: bool = False,
    source: str | os.PathLike[str] | None = None,
    ungated: bool = False,
) -> Path:
    """Write ``steerer`` at ``strength`` to ``path`` in ``format``; returns the path written.

    Args:
        steerer: a fitted :class:`~lineas_tl.steerer.HookedSteerer`.
        path: a new file (``gguf``, ``control-vector``) or a new directory (``hf``).
        format: one of :data:`FORMATS`.
        strength: a float, ``{site: float}``, or ``"calibrated"`` (the steerer's
            ``calibrated_strength_``).
        inverse: export :math:`T^{-1}` (induce the concept instead of removing it).
        source: ``gguf`` only: the GGUF to start from, when the model does not record the file it
            was loaded from.
        ungated: a gated steerer (``fit(..., gate=True)``) is refused, since its gate depends on
            the input; ``True`` exports its maps without the gate (every token steered).

    Raises:
        ValueError: an unknown format. ExportError / FoldError: the steerer cannot be written
        exactly in this format (the message says why and what to use instead).
    """
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {FORMATS}")
    from lineas_tl.fold import ungated_view

    steerer = ungated_view(steerer, ungated, "export")
    if source is not None and format != "gguf":
        raise ValueError(f"source= is for format='gguf' only, not {format!r}")
    if format == "gguf":
        from lineas_tl.export.gguf_model import save_gguf

        return save_gguf(steerer, path, strength, inverse=inverse, source=source)
    if format == "control-vector":
        from lineas_tl.export.control_vector import save_control_vector

        return save_control_vector(steerer, path, strength, inverse=inverse)
    from lineas_tl.export.hf import save_folded

    return save_folded(steerer, path, strength, inverse=inverse)
