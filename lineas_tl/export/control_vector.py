r"""``format="control-vector"``: a llama.cpp control vector, for steerers that only add.

llama.cpp's control vector is a GGUF with ``general.architecture = "controlvector"``,
``controlvector.model_hint`` and ``controlvector.layer_count``, and one F32 tensor ``direction.L``
of length ``d_model`` per layer, added to the output of block ``L`` (0-based, after the MLP's
residual add) at every position. Its loader rejects ``direction.0``: block 0's output has no slot
(checked in the llama.cpp source vendored by llama-cpp-python 0.3.36: ``llama_adapter_cvec`` keeps
no tensor for layer 0, and ``common``'s loader refuses index 0).

So a shift :math:`b' = \lambda b` (:math:`\omega = 1`) at ``blocks.L.hook_mlp_out``,
``blocks.L.hook_resid_post`` or ``blocks.(L+1).hook_resid_pre``, with :math:`L \ge 1`, is exactly
``direction.L`` (shifts landing on the same block output add up). Anything else is refused with a
pointer to ``format="gguf"``, which folds affine maps, attention-output shifts and block 0 exactly:
a scaling (:math:`\omega \ne 1`), a shift on ``hook_attn_out`` (it passes through the MLP before
reaching the block output), a block-0 shift, and maps restricted to a support range or to some
positions. Our keys ``lineas_tl.record`` / ``lineas_tl.method`` / ``lineas_tl.strength`` record
the steerer.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lineas_tl.export.common import (
    ExportError,
    active_strengths,
    atomic_path,
    check_new_path,
    record_json,
    resolve_strength,
    steerer_record,
)
from lineas_tl.fold import Steerable, effective_affine, map_refusal, site_strengths
from lineas_tl.sites import hook_points

__all__ = ["control_vector_directions", "save_control_vector"]

_MLP_OUT = re.compile(r"^blocks\.(\d+)\.mlp\.hook_out$")
_BLOCK_OUT = re.compile(r"^blocks\.(\d+)\.hook_out$")  # resid_post of block L
_BLOCK_IN = re.compile(r"^blocks\.(\d+)\.hook_in$")  # resid_pre of block L = output of block L-1


def _block_output(model: Any, site: str) -> int | None:
    """The block whose output ``site`` shifts exactly (``None`` if it is not a block output)."""
    name = getattr(hook_points(model).get(site), "name", None) or site
    for pattern, delta in ((_MLP_OUT, 0), (_BLOCK_OUT, 0), (_BLOCK_IN, -1)):
        m = pattern.match(name)
        if m is not None:
            return int(m.group(1)) + delta
    return None


def control_vector_directions(
    steerer: Steerable, strength: float | str | Mapping[str, float] = 1.0, *, inverse: bool = False
) -> dict[int, np.ndarray]:
    """``{block L: direction}`` (float32, ``[d_model]``) equal to the steering, or a refusal.

    Raises:
        ExportError: some map is not a shift on a block output after block 0 (the message lists
            each and points to ``format="gguf"``).
    """
    resolved = resolve_strength(steerer, strength, inverse)
    reasons: dict[str, str] = {}
    for site, lam in site_strengths(steerer, resolved, inverse=inverse).items():
        m = steerer.maps_[site]
        if lam == 0.0 or m.is_identity():
            continue
        layer = _block_output(steerer.model, site)
        if (why := map_refusal(m)) is not None:
            reasons[site] = why
        elif bool((m.weight != 1).any()):
            reasons[site] = "it scales (omega != 1); a control vector only adds"
        elif layer is None:
            reasons[site] = "it is not a block output (llama.cpp adds control vectors after each block's MLP)"
        elif layer < 1:
            reasons[site] = "block 0's output has no control-vector slot in llama.cpp"
    if reasons:
        grouped: dict[str, list[str]] = {}
        for s, why in reasons.items():
            grouped.setdefault(why, []).append(s)
        listing = "; ".join(
            f"{why}: {', '.join(sites[:3])}" + (f" and {len(sites) - 3} more" if len(sites) > 3 else "")
            for why, sites in grouped.items()
        )
        raise ExportError(
            f"this steerer cannot be written as a llama.cpp control vector exactly ({listing}). Use "
            "format='gguf', which folds it into the model's weights exactly."
        )
    directions: dict[int, np.ndarray] = {}
    for site, lam in active_strengths(steerer, resolved, inverse=inverse).items():
        _, shift = effective_affine(steerer.maps_[site], lam, inverse)
        layer = _block_output(steerer.model, site)
        assert layer is not None  # checked above
        directions[layer] = directions.get(layer, 0) + shift.numpy()
    return {k: v.astype(np.float32) for k, v in sorted(directions.items())}


def _model_hint(model: Any) -> str:
    """The architecture name for ``controlvector.model_hint`` (the HF ``model_type``, e.g. "llama")."""
    hf = getattr(model, "original_model", None)
    return str(getattr(getattr(hf, "config", None), "model_type", None) or "llama")


def save_control_vector(
    steerer: Steerable,
    path: str | os.PathLike[str],
    strength: float | str | Mapping[str, float] = 1.0,
    *,
    inverse: bool = False,
) -> Path:
    """Write ``steerer`` at ``strength`` as a llama.cpp control vector GGUF at the new file ``path``.

    Use it with ``llama-cli --control-vector path`` (its scale multiplies the strength written here).

    Raises:
        ExportError: the steerer is not purely additive at block outputs after block 0.
        FileExistsError: ``path`` exists.
    """
    import gguf

    target = check_new_path(path)
    directions = control_vector_directions(steerer, strength, inverse=inverse)
    if not directions:
        raise ExportError("nothing to export: every map is the identity at this strength")
    record = steerer_record(steerer, strength, inverse, "control-vector")
    with atomic_path(target) as tmp:
        writer = gguf.GGUFWriter(tmp, "controlvector")
        writer.add_string("controlvector.model_hint", _model_hint(steerer.model))
        writer.add_uint32("controlvector.layer_count", len(directions))
        writer.add_string("lineas_tl.record", record_json(record))
        writer.add_string("lineas_tl.method", str(record.get("method")))
        if isinstance(record["strength"], float):
            writer.add_float32("lineas_tl.strength", record["strength"])
        for layer, direction in directions.items():
            writer.add_tensor(f"direction.{layer}", direction)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return target
