r"""``format="gguf"``: a complete GGUF model with the steering folded in, for llama.cpp, Ollama, LM Studio.

It starts from the GGUF the model was loaded from (:func:`lineas_tl.models.load` records it; the
embedded SmolLM2 is one), or, for a Llama model that was not loaded from a GGUF, from an F32 GGUF
written from its weights and tokenizer (:mod:`~lineas_tl.export.gguf_from_hf`). It copies that file
with ``gguf``'s reader and writer: every metadata key (the
tokenizer, chat template, hyper-parameters) and every tensor stays as it was, except

- a projection whose rows a map scales (:math:`\omega' \ne 1`): ``blk.N.attn_output.weight``
  or ``blk.N.ffn_down.weight`` becomes ``diag(ω') W``. A quantised source tensor is dequantised
  and the folded tensor written as **F32** (exact; the rest of the file stays quantised as it was).
  Input-side maps scale the columns instead: ``attn.hook_z`` and ``mlp.hook_post`` those of
  ``attn_output`` and ``ffn_down``; a norm output, ``blocks.L.ln2.hook_out`` (the paper's site),
  those of ``blk.N.ffn_gate`` and ``blk.N.ffn_up``, and ``blocks.L.ln1.hook_out`` those of
  ``blk.N.attn_q``, ``attn_k``, ``attn_v`` (whose q/k rows are in llama.cpp's rotary order; a column
  scaling does not mind);
- the shift :math:`b'` (and :math:`W b'` for input-side maps), written as a new F32 tensor
  ``blk.N.attn_output.bias``, ``blk.N.ffn_down.bias``, ``blk.N.ffn_gate.bias``, ``blk.N.ffn_up.bias``
  or ``blk.N.attn_{q,k,v}.bias``. llama.cpp's llama architecture loads these optional biases
  (``TENSOR_NOT_REQUIRED`` in ``models/llama.cpp``) and adds them (``build_qkv``, ``build_attn``,
  ``build_ffn``: checked in the source vendored by llama-cpp-python 0.3.36, and end to end); for
  other architectures a bias is refused rather than silently dropped.

Our own keys record what was folded: ``lineas_tl.record`` (JSON: method, hyper-parameters, strength,
sites, fingerprint), ``lineas_tl.method``, ``lineas_tl.strength``, ``lineas_tl.source_file`` and
``lineas_tl.dequantised_tensors``. The file is written to a temporary name and renamed; the source
GGUF is only read.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from lineas_tl.export.common import (
    ExportError,
    active_strengths,
    atomic_path,
    check_new_path,
    clean_key,
    record_json,
    steerer_record,
)
from lineas_tl.export.gguf_from_hf import rotary_rows, write_llama_gguf
from lineas_tl.fold import (
    FoldError,
    FoldTarget,
    Steerable,
    effective_affine,
    fold_order,
    fold_target,
    is_conv1d,
)

__all__ = ["BIAS_ARCHITECTURES", "SOURCE_ATTR", "save_gguf", "source_gguf"]

# Architectures whose llama.cpp graph adds the optional biases of blk.N.attn_{q,k,v,output} and
# blk.N.ffn_{gate,up,down} when present.
BIAS_ARCHITECTURES = frozenset({"llama"})
# The attribute lineas_tl.models.load sets on a model loaded from a GGUF file.
SOURCE_ATTR = "lineas_tl_source_gguf"


def source_gguf(model: Any, source: str | os.PathLike[str] | None = None) -> Path | None:
    """The GGUF to start from: ``source``, else the file ``model`` was loaded from (None: neither).

    Raises:
        FileNotFoundError: the file named does not exist.
    """
    given = source if source is not None else getattr(model, SOURCE_ATTR, None)
    if given is None:
        return None
    path = Path(given).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"source GGUF {path} does not exist; pass the GGUF this model was loaded from")
    return path


def _from_hf(model: Any, directory: Path) -> Path:
    """An F32 GGUF of ``model``'s Hugging Face weights, written into ``directory``."""
    hf = getattr(model, "original_model", None)
    if not isinstance(hf, nn.Module) or not hasattr(hf, "config"):
        raise FileNotFoundError(
            f"no source GGUF for this {type(model).__name__}: format='gguf' starts from the GGUF the model "
            "was loaded from (lineas_tl.models.load('path/to/model.gguf')), or pass source='model.gguf'"
        )
    return write_llama_gguf(hf, getattr(model, "tokenizer", None), directory / "source.gguf")


@dataclass
class _Edit:
    """The folded state of one projection of the GGUF (float64, ``[out, in]``)."""

    base: str  # e.g. "blk.3.attn_output"
    weight: np.ndarray
    bias: np.ndarray
    had_bias: bool
    scaled: bool = False


def save_gguf(
    steerer: Steerable,
    path: str | os.PathLike[str],
    strength: float | str | Mapping[str, float] = 1.0,
    *,
    inverse: bool = False,
    source: str | os.PathLike[str] | None = None,
) -> Path:
    """Write the model's GGUF with ``steerer``'s maps at ``strength`` folded in, to the new file ``path``.

    Args:
        steerer: a fitted steerer on a ``TransformerBridge``, loaded from a GGUF (or pass ``source``);
            otherwise a Llama model, written to GGUF from its weights first.
        path: the new ``.gguf`` file.
        strength: a float, ``{site: float}`` or ``"calibrated"``.
        inverse: fold :math:`T^{-1}` instead of :math:`T`.
        source: the GGUF the model was loaded from, when the model does not record it.

    Raises:
        FileNotFoundError: no source GGUF, and the model is not a Hugging Face model to write one from.
        FoldError: a site has no projection in the GGUF, a map acts on some tokens only, or the
            source GGUF does not hold this model's weights.
        ExportError: the architecture does not read the projection biases a shift needs.
        FileExistsError: ``path`` exists (or is the source).
    """
    src = source_gguf(steerer.model, source)
    target = check_new_path(path, protect=src)
    per_site = active_strengths(steerer, strength, inverse=inverse)
    record = steerer_record(steerer, strength, inverse, "gguf")
    if src is not None:
        record["source_file"] = src.name
        return _export_from(src, steerer, per_site, inverse, record, target)
    record["source_file"] = "written from the model's Hugging Face weights (F32)"
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as d:
        return _export_from(_from_hf(steerer.model, Path(d)), steerer, per_site, inverse, record, target)


def _export_from(
    src: Path, steerer: Steerable, per_site: dict[str, float], inverse: bool, record: dict[str, Any], target: Path
) -> Path:
    import gguf

    reader = gguf.GGUFReader(src)
    arch = str(reader.fields["general.architecture"].contents())
    tensors = {t.name: t for t in reader.tensors}
    edits = _fold_into(steerer, per_site, inverse, reader, arch, tensors)
    new_bias = [e.base for e in edits.values() if not e.had_bias and bool(np.any(e.bias != 0))]
    if new_bias and arch not in BIAS_ARCHITECTURES:
        raise ExportError(
            f"unsupported architecture {arch!r} for a folded GGUF with shifts: llama.cpp reads "
            f"{new_bias[0]}.bias only for {sorted(BIAS_ARCHITECTURES)} (checked in its source). Use "
            "format='hf' for this model, or a steerer without shifts"
        )
    with atomic_path(target) as tmp:
        _write(reader, arch, edits, record, tmp)
    return target


def _fold_into(
    steerer: Steerable,
    per_site: dict[str, float],
    inverse: bool,
    reader: Any,
    arch: str,
    tensors: dict[str, Any],
) -> dict[str, _Edit]:
    """Apply every active map to its projection, in the model's order (inputs before outputs)."""
    import gguf

    model = steerer.model
    hf = getattr(model, "original_model", None)
    if not isinstance(hf, nn.Module):
        raise FoldError(f"{type(model).__name__} does not wrap a Hugging Face model; format='gguf' needs a TransformerBridge")
    names: dict[int, list[str]] = {}  # the bridge makes one module reachable under several names
    for n, m in hf.named_modules(remove_duplicate=False):
        names.setdefault(id(m), []).append(clean_key(n))
    n_blocks = int(reader.fields[f"{arch}.block_count"].contents())
    arch_enum = next((k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch), None)
    if arch_enum is None:
        raise ExportError(f"unsupported architecture {arch!r}: the gguf package does not know its tensor names")
    name_map = gguf.get_tensor_name_map(arch_enum, n_blocks)
    heads = {
        k: int(reader.fields[f"{arch}.attention.{k}"].contents())
        for k in ("head_count", "head_count_kv")
        if f"{arch}.attention.{k}" in reader.fields
    }
    targets: list[FoldTarget] = []
    bases: dict[int, str | None] = {}
    for site in per_site:
        t = fold_target(model, site)
        for lin in () if isinstance(t, str) else t.linears:
            found = [name_map.get_name(n) for n in names.get(id(lin), [])]
            bases[id(lin)] = next((b for b in found if b is not None and f"{b}.weight" in tensors), None)
        if isinstance(t, str) or any(bases[id(lin)] is None for lin in t.linears):
            why = t if isinstance(t, str) else "its linear layer has no tensor in the GGUF"
            raise FoldError(
                f"cannot fold the map at {site} into the GGUF ({why}); only maps next to a projection fold "
                "(blocks.L.hook_attn_out, blocks.L.hook_mlp_out, blocks.L.attn.hook_z, blocks.L.ln2.hook_out)"
            )
        targets.append(t)
    edits: dict[str, _Edit] = {}
    for t in fold_order(model, targets):
        omega, shift = (x.numpy() for x in effective_affine(steerer.maps_[t.site], per_site[t.site], inverse))
        if t.shift_only and bool(np.any(omega != 1)):
            raise FoldError(f"the map at {t.site} scales the residual stream (omega != 1): only a shift folds")
        for lin in t.linears:
            base = str(bases[id(lin)])
            e = edits[base] = edits.get(base) or _load_edit(base, tensors, lin, heads)
            _fold_edit(e, t.site, t.side, omega, shift)
    return edits


def _fold_edit(e: _Edit, site: str, side: str, omega: np.ndarray, shift: np.ndarray) -> None:
    """Apply ``(omega, shift)`` on the input or the output side of ``e``'s projection."""
    width = e.weight.shape[1 if side == "in" else 0]
    if omega.size != width:
        raise FoldError(f"the map at {site} has {omega.size} features but {e.base} has {width}: wrong source GGUF?")
    if side == "out":
        e.bias = omega * e.bias + shift
        if bool(np.any(omega != 1)):
            e.weight, e.scaled = omega[:, None] * e.weight, True
    else:
        e.bias = e.bias + e.weight @ shift
        if bool(np.any(omega != 1)):
            e.weight, e.scaled = e.weight * omega[None, :], True


def _load_edit(base: str, tensors: dict[str, Any], linear: nn.Module, heads: dict[str, int]) -> _Edit:
    """Dequantise ``base.weight`` (and its bias), checking it is the model's own projection."""
    import gguf

    t = tensors[f"{base}.weight"]
    weight = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64)
    mine = linear.weight.detach().double().cpu()
    mine = (mine.T if is_conv1d(linear) else mine).numpy()
    candidates = [mine]
    n_head = heads.get({"attn_q": "head_count", "attn_k": "head_count_kv"}.get(base.rpartition(".")[2], ""))
    if n_head and mine.shape[0] % (2 * n_head) == 0:
        # Llama's converter stores q/k rows in llama.cpp's rotary order; others do not. The fold
        # itself is computed on the GGUF's own tensor, so this only matters for the check.
        candidates.append(rotary_rows(mine, n_head))
    if not any(_same(weight, c) for c in candidates):
        raise FoldError(
            f"the source GGUF's {base}.weight is not this model's weight (shape {weight.shape} vs "
            f"{mine.shape}, or different values): pass the GGUF the model was loaded from"
        )
    b = tensors.get(f"{base}.bias")
    bias = (
        gguf.quants.dequantize(b.data, b.tensor_type).astype(np.float64).reshape(-1)
        if b is not None
        else np.zeros(weight.shape[0])
    )
    return _Edit(base, weight, bias, had_bias=b is not None)


def _same(weight: np.ndarray, mine: np.ndarray) -> bool:
    return mine.shape == weight.shape and np.linalg.norm(weight - mine) <= 1e-3 * (1e-12 + np.linalg.norm(mine))


def _write(reader: Any, arch: str, edits: dict[str, _Edit], record: dict[str, Any], tmp: Path) -> None:
    """Copy ``reader``'s file to ``tmp`` with the edited tensors (F32) and our metadata keys."""
    import gguf

    writer = gguf.GGUFWriter(tmp, arch=arch, endianess=reader.endianess)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == gguf.Keys.General.ARCHITECTURE:
            continue
        if field.name == gguf.Keys.General.ALIGNMENT:
            writer.add_custom_alignment(int(field.contents()))
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
    dequantised = sorted(
        f"{e.base}.weight"
        for e in edits.values()
        if e.scaled and _reader_type(reader, f"{e.base}.weight") not in ("F32", "F64")
    )
    writer.add_string("lineas_tl.record", record_json(record))
    writer.add_string("lineas_tl.method", str(record.get("method")))
    if isinstance(record["strength"], float):
        writer.add_float32("lineas_tl.strength", record["strength"])
    writer.add_string("lineas_tl.source_file", str(record["source_file"]))
    writer.add_array("lineas_tl.dequantised_tensors", dequantised)

    plan: list[tuple[np.ndarray, Any]] = []  # (data, endianness) in the order the infos are added
    native = gguf.GGUFEndian.BIG if sys.byteorder == "big" else gguf.GGUFEndian.LITTLE
    for t in reader.tensors:
        base, _, kind = t.name.rpartition(".")
        e = edits.get(base)
        if e is not None and ((kind == "weight" and e.scaled) or (kind == "bias")):
            data = (e.weight if kind == "weight" else e.bias).astype(np.float32)
            writer.add_tensor_info(t.name, data.shape, data.dtype, data.nbytes)
            plan.append((data, native))
        else:
            writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
            plan.append((t.data, reader.endianess))
        if e is not None and kind == "weight" and not e.had_bias and bool(np.any(e.bias != 0)):
            bias = e.bias.astype(np.float32)
            writer.add_tensor_info(f"{base}.bias", bias.shape, bias.dtype, bias.nbytes)
            plan.append((bias, native))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for data, endian in plan:
        writer.write_tensor_data(data, tensor_endianess=endian)
    writer.close()


def _reader_type(reader: Any, name: str) -> str:
    for t in reader.tensors:
        if t.name == name:
            return str(t.tensor_type.name)
    return "missing"
