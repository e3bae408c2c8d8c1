"""Where each hook site's map folds: the linear layers next to it, on their input or their output.

See :mod:`lineas_tl.fold` for the algebra. A site folds when it is

- the input or the output of a linear layer (``torch.nn.Linear`` or Hugging Face's ``Conv1D``);
- the input of a sublayer whose every reader of that input is a linear layer: a pre-LN block's
  norm output (``blocks.L.ln2.hook_out``, the same tensor as ``blocks.L.mlp.hook_in``, read by the
  MLP's input projections: ``gate_proj`` and ``up_proj``, or GPT-2's ``c_fc``; ``blocks.L.ln1.hook_out``
  = ``blocks.L.attn.hook_in``, read by ``q_proj``, ``k_proj``, ``v_proj``, or GPT-2's ``c_attn``).
  The map folds into the input of each of them;
- the residual stream between blocks (shifts only, into the previous block's MLP output bias).

A post-sublayer norm's output (Gemma-2/3's ``ln1_post``, ``ln2_post``) is added to the residual
stream, which no single linear layer reads: it does not fold.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from lineas_tl.sites import hook_points

__all__ = ["FoldTarget", "fold_order", "fold_plan", "fold_target", "is_conv1d", "unfoldable_sites"]

# Containers whose ``hook_out`` is exactly the output of one of their linear submodules.
_OUTPUT_LINEAR = ("o", "out")
# The sublayer that reads a pre-sublayer norm's output.
_NORM_SUBLAYER = {"ln1": "attn", "ln2": "mlp"}
_SUBLAYER_INPUT = re.compile(r"^blocks\.(\d+)\.(?:(ln1|ln2)\.hook_out|(attn|mlp)\.hook_in)$")
_POST_NORM = re.compile(r"^blocks\.\d+\.ln\d+_post\.hook_out$")


@dataclass(frozen=True)
class FoldTarget:
    """Where a site's map folds: one or more linear layers, all on their input or all on their output."""

    site: str
    linears: tuple[nn.Module, ...]
    side: str  # "in" | "out"
    # Order of folds on the same layer. Input-side folds compose in reverse (the later fold acts
    # first), so the layer's own input comes first, then its sublayer's input, then the norm output.
    stage: int  # 0 own input, 1 sublayer input, 2 norm output, 3 own output, 4 container output, 5 residual
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
        return FoldTarget(site, (core,), "in", 0)
    if attr == "hook_out" and _is_linear(core):
        return FoldTarget(site, (core,), "out", 3)
    if attr == "hook_out":
        for child in _OUTPUT_LINEAR:
            sub = getattr(parent, child, None)
            if isinstance(sub, nn.Module) and _is_linear(_core(sub)):
                return FoldTarget(site, (_core(sub),), "out", 4)
    name = getattr(hook_points(model).get(site), "name", None) or site
    sublayer_input = _sublayer_input_target(model, site, name)
    if sublayer_input is not None:
        return sublayer_input
    block = _BLOCK_HOOK.match(name)
    if block is not None:
        # The residual stream between blocks (resid_pre of block L = resid_post of block L-1) is
        # resid_mid + mlp_out of block L-1: a shift there is the same shift on that MLP's output.
        layer = int(block.group(1)) - (1 if block.group(2) == "in" else 0)
        if layer < 0:
            return "the residual stream before the first block (embeddings); no linear layer to fold into"
        mlp_out = getattr(getattr(_block(model, layer), "mlp", None), "out", None)
        if isinstance(mlp_out, nn.Module) and _is_linear(_core(mlp_out)):
            return FoldTarget(site, (_core(mlp_out),), "out", 5, shift_only=True)
    return "not the input or output of a linear layer"


def _sublayer_input_target(model: nn.Module, site: str, name: str) -> FoldTarget | str | None:
    """A sublayer's input (its pre-norm's output, or its own ``hook_in``): the input side of every
    linear layer that reads it. A reason where it does not fold; None for any other site."""
    if _POST_NORM.match(name):
        return (
            "the output of a post-sublayer norm, which is added to the residual stream: no linear layer "
            "reads it alone"
        )
    match = _SUBLAYER_INPUT.match(name)
    if match is None:
        return None
    block = _block(model, int(match.group(1)))
    norm = match.group(2)
    if norm == "ln1" and getattr(block, "ln2", None) is None:
        return "the only norm of a parallel block, read by the attention and the MLP alike"
    sublayer = getattr(block, _NORM_SUBLAYER[norm] if norm else match.group(3), None)
    readers = _input_linears(sublayer) if isinstance(sublayer, nn.Module) else "no sublayer reads it"
    if isinstance(readers, str):
        return readers
    return FoldTarget(site, readers, "in", 2 if norm else 1)


def _input_linears(sublayer: nn.Module) -> tuple[nn.Module, ...] | str:
    """The linear layers that read ``sublayer``'s input (all its linears but the output projection),
    or why that cannot be told (it holds something else that has weights)."""
    linears: list[nn.Module] = []
    output: list[nn.Module] = []
    for child_name, child in sublayer.named_children():
        if child_name == "_original_component" or type(child).__name__ == "HookPoint":
            continue
        if not _is_linear(_core(child)):
            return f"its sublayer holds {child_name} ({type(_core(child)).__name__}), not a linear layer"
        (output if child_name in _OUTPUT_LINEAR else linears).append(_core(child))
    # Every weighted part of the wrapped module must be one of those (no reader the bridge hides).
    for child_name, child in _core(sublayer).named_children():
        inner = _core(child)
        known = any(inner is m for m in linears + output)
        if not known and any(True for _ in inner.parameters()):
            return f"its sublayer holds {child_name} ({type(inner).__name__}), which the fold cannot account for"
    # A bridge's split views of a fused projection (GPT-2's q, k, v of c_attn) change with it.
    owners = tuple(m for m in linears if not any(_is_view_of(m, o) for o in linears if o is not m))
    return owners or "its sublayer has no linear layer reading its input"


def _is_view_of(part: nn.Module, whole: nn.Module) -> bool:
    """Whether ``part``'s weight lies inside ``whole``'s (larger) weight storage."""
    a, b = part.weight, whole.weight
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr() and a.numel() < b.numel()


_BLOCK_HOOK = re.compile(r"^blocks\.(\d+)\.hook_(in|out)$")


def _block(model: nn.Module, layer: int) -> nn.Module | None:
    blocks = getattr(model, "blocks", None)
    try:
        return blocks[layer] if blocks is not None else None
    except (IndexError, TypeError):
        return None


def fold_order(model: nn.Module, targets: list[FoldTarget]) -> list[FoldTarget]:
    """``targets`` in the order to fold them: by layer (the last one a target writes), then stage."""
    order = {id(m): i for i, (_, m) in enumerate(model.named_modules())}
    return sorted(targets, key=lambda t: (max(order.get(id(m), 0) for m in t.linears), t.stage))


def fold_plan(model: Any, sites: list[str]) -> dict[str, str]:
    """For each site, where its map would fold or why not.

    E.g. ``"input of gate_proj and up_proj (Linear)"``, ``"output of c_proj (Conv1D)"``.
    """
    names: dict[int, str] = {}
    for root in (getattr(model, "original_model", None), model):  # Hugging Face names first
        if isinstance(root, nn.Module):
            _plain_names(root, "", names)
    out: dict[str, str] = {}
    for site in sites:
        t = fold_target(model, site)
        if isinstance(t, str):
            out[site] = t
            continue
        labels = [names.get(id(m), type(m).__name__) for m in t.linears]
        listed = labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " and " + labels[-1]
        kinds = ", ".join(sorted({type(m).__name__ for m in t.linears}))
        out[site] = f"{t.side}put of {listed} ({kinds})" + (
            " (a shift on the residual stream: omega must be 1)" if t.shift_only else ""
        )
    return out


def _plain_names(module: nn.Module, name: str, names: dict[int, str]) -> None:
    """Record each module's attribute name in its wrapped parent (``gate_proj``, ``c_attn``), seen
    through the bridge's wrappers; the bridge's own aliases (``mlp.gate``) are not followed."""
    core = _core(module)
    names.setdefault(id(core), name)
    for child_name, child in core.named_children():
        _plain_names(child, child_name, names)


def unfoldable_sites(model: Any, sites: list[str]) -> dict[str, str]:
    """The sites among ``sites`` whose maps cannot be folded into weights, with the reason."""
    targets = {s: fold_target(model, s) for s in sites}
    return {s: t for s, t in targets.items() if isinstance(t, str)}
