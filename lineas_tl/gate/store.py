"""A gate in a saved steerer: tensors ``gate.{site}.{mean,components,scale,weight,bias}`` next to
the maps in ``maps.safetensors``, and a ``"gate"`` entry in ``steerer.json`` (options, and each
site's accuracy and whether it is active). Steerers saved before gates (format 1) have neither."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lineas_tl.gate.gate import Gate, GateOptions
from lineas_tl.gate.probe import SiteProbe

_FIELDS = ("mean", "components", "scale", "weight", "bias")


def gate_tensors(gate: Gate | None) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """``(tensors, meta)`` to save for ``gate`` (``({}, None)`` without a gate)."""
    if gate is None:
        return {}, None
    tensors = {f"gate.{site}.{f}": getattr(p, f).detach().cpu().contiguous().clone() for site, p in gate.probes.items() for f in _FIELDS}
    sites = {s: {"accuracy": p.accuracy, "active": p.active} for s, p in gate.probes.items()}
    options = {k: getattr(gate.options, k) for k in GateOptions.__dataclass_fields__}
    return tensors, {"options": options, "trained": gate.trained, "sites": sites}


def gate_from(tensors: dict[str, Tensor], meta: dict[str, Any] | None, device: torch.device) -> Gate | None:
    """The gate saved by :func:`gate_tensors` (None when ``meta`` is None). Raises KeyError/ValueError on a bad file."""
    if meta is None:
        return None
    probes = {}
    for site, info in meta["sites"].items():
        t = {f: tensors[f"gate.{site}.{f}"] for f in _FIELDS}
        probe = SiteProbe(t["mean"], t["components"], t["scale"], t["weight"], t["bias"],
                          accuracy=float(info["accuracy"]), active=bool(info["active"]))  # fmt: skip
        probes[site] = probe.to(device).requires_grad_(False)
    return Gate(probes, GateOptions(**meta["options"]), trained=bool(meta.get("trained", False)))
