"""Where each hook site's map folds: the linear layer next to it, on its input or its output.

See :mod:`lineas_tl.fold` for the algebra. A site folds when it is the input or the output of a
linear layer (``torch.nn.Linear`` or Hugging Face's ``Conv1D``), or the residual stream between
blocks (shifts only, into the previous block's MLP output bias).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from lineas_tl.sites import hook_points

__all__ = ["FoldTarget", "fold_plan", "fold_target", "is_conv1d", "unfoldable_sites"]

# Containers whose ``hook_out`` is exactly the output of one of their linear submodules.
_OUTPUT_LINEAR = ("o", "out")


@dataclass(frozen=True)
class FoldTarget:
    """Where a site's map folds: a linear layer, on its input or its output."""

    site: str
    linear: nn.Module
    side: str  # "in" | "out"
    stage: int  # order on the same layer: input, own output, container output, residual stream
    shift_only: bool = False  # a residual-stream site: only omega = 1 maps fold (see fold_target)


def _parent_of(model: nn.Module, site: str) -> tuple[nn.Module, str] | None:
    """The module holding the HookPoint of ``site`` and the HookPoint's attribute name."""
    hp = hook_points(model).get(site)
    if hp is None:
        return None
    name = hp.name or site
    parent_path, _, attr = name.rpartition(".")
    try:
        parent = model.get_submodule(parent_path) if parent_path else model
        if getattr(parent, attr, None) is hp:
            return parent, attr
    except AttributeError:
        pass
    for _, module in model.named_modules(remove_duplicate=False):
        for child_name, child in module.named_children():
            if child is hp:
                return module, child_name
    return None


def _core(module: nn.Module) -> nn.Module:
    """The wrapped torch module of a TransformerLens bridge component (or the module itself)."""
    inner = getattr(module, "original_component", None)
    return inner if isinstance(inner, nn.Module) else module


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_conv1d(module)


def is_conv1d(module: nn.Module) -> bool:
    """Hugging Face's ``Conv1D`` (GPT-2 family): a linear layer storing its weight as ``[in, out]``."""
    return type(module).__name__ == "Conv1D" and isinstance(getattr(module, "weight", None), Tensor)


def fold_target(model: nn.Module, site: str) -> FoldTarget | str:
    """Where ``site`` folds, or the reason it does not."""
    found = _parent_of(model, site)
    if found is None:
        return "not a hook point of this model"
    parent, attr = found
    core = _core(parent)
    if attr == "hook_in" and _is_linear(core):
        return FoldTarget(site, core, "in", 0)
    if attr == "hook_out" and _is_linear(core):
        return FoldTarget(site, core, "out", 1)
    if attr == "hook_out":
        for child in _OUTPUT_LINEAR:
            sub = getattr(parent, child, None)
            if isinstance(sub, nn.Module) and _is_linear(_core(sub)):
                return FoldTarget(site, _core(sub), "out", 2)
    block = _BLOCK_HOOK.match(getattr(hook_points(model).get(site), "name", None) or site)
    if block is not None:
        # The residual stream between blocks (resid_pre of block L = resid_post of block L-1) is
        # resid_mid + mlp_out of block L-1: a shift there is the same shift on that MLP's output.
        layer = int(block.group(1)) - (1 if block.group(2) == "in" else 0)
        if layer < 0:
            return "the residual stream before the first block (embeddings); no linear layer to fold into"
        mlp_out = getattr(getattr(_block(model, layer), "mlp", None), "out", None)
        if isinstance(mlp_out, nn.Module) and _is_linear(_core(mlp_out)):
            return FoldTarget(site, _core(mlp_out), "out", 3, shift_only=True)
    return "not the input or output of a linear layer"


_BLOCK_HOOK = re.compile(r"^blocks\.(\d+)\.hook_(in|out)$")


def _block(model: nn.Module, layer: int) -> nn.Module | None:
    blocks = getattr(model, "blocks", None)
    try:
        return blocks[layer] if blocks is not None else None
    except (IndexError, TypeError):
        return None


def fold_plan(model: Any, sites: list[str]) -> dict[str, str]:
    """For each site, where its map would fold (``"output of ..."``/``"input of ..."``) or why not."""
    out: dict[str, str] = {}
    for site in sites:
        t = fold_target(model, site)
        if isinstance(t, str):
            out[site] = t
        else:
            out[site] = f"{t.side}put of {type(t.linear).__name__}" + (
                " (a shift on the residual stream: omega must be 1)" if t.shift_only else ""
            )
    return out


def unfoldable_sites(model: Any, sites: list[str]) -> dict[str, str]:
    """The sites among ``sites`` whose maps cannot be folded into weights, with the reason."""
    targets = {s: fold_target(model, s) for s in sites}
    return {s: t for s, t in targets.items() if isinstance(t, str)}
