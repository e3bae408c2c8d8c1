r"""Fold steering maps into the model's own weights: a steered model that costs nothing extra to run.

A per-coordinate affine map at strength :math:`\lambda` is itself per-coordinate affine,

.. math::

    T^\lambda(z) = \omega' \odot z + b', \qquad \omega' = 1 + \lambda(\omega - 1),\ b' = \lambda b
    \qquad (\text{inverse: } \omega' = 1 + \lambda(1/\omega - 1),\ b' = -\lambda b / \omega)

so wherever it sits next to a linear layer :math:`y = W x + c` it can be written into that layer:

- on the layer's **output** (``blocks.L.hook_attn_out`` = ``attn.hook_out``, the output of the
  attention's output projection :math:`W_O`; ``blocks.L.hook_mlp_out`` = ``mlp.hook_out``, the
  output of the MLP's down projection; or the projection's own ``hook_out``):
  :math:`T(Wx + c) = (\omega' \odot W) x + (\omega' \odot c + b')`, i.e. scale the rows of
  :math:`W` and map the bias;
- on the layer's **input** (``attn.hook_z`` = ``attn.o.hook_in``, ``mlp.out.hook_in``):
  :math:`W(\omega' \odot x + b') + c = (W \operatorname{diag}\omega') x + (W b' + c)`, i.e. scale
  the columns and add :math:`W b'` to the bias (so ITI's head shifts fold into :math:`b_O`);
- a pure **shift** (:math:`\omega = 1`, e.g. ActAdd) on the residual stream between blocks
  (``blocks.L.hook_resid_pre`` = ``blocks.L-1.hook_resid_post``, :math:`L \ge 1`): the residual
  there is ``resid_mid + mlp_out`` of block :math:`L-1`, so the shift goes into that block's MLP
  down-projection bias.

Both ``torch.nn.Linear`` (weight ``[out, in]``) and Hugging Face's ``Conv1D`` (GPT-2; weight
``[in, out]``) are handled. A layer without a bias (Llama's ``o_proj`` and ``down_proj``) gets a
bias ``Parameter`` only when the folded bias is non-zero; :meth:`FoldHandle.undo` removes it again.
Sites anywhere else (after a nonlinearity or a norm, the residual stream, ...) cannot be folded
exactly: :func:`fold` refuses them with the list. Token-position-restricted steering
(``positions="prompt"``) cannot be folded either: weights act on every position.

By default the fold is checked: one short probe sequence is run through the hooked model and
through the folded one, and any disagreement undoes the fold and raises.

Example:
    >>> with steerer.fold(strength=0.8):          # weights rewritten here ...
    ...     text = model.generate("The man said", max_new_tokens=20)
    >>> # ... and restored bit for bit here. Or keep it: handle = steerer.fold(); handle.undo()
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from lineas_tl.maps import AffineMap
from lineas_tl.sites import hook_points

if TYPE_CHECKING:
    from lineas_tl.steerer import HookedSteerer

__all__ = [
    "FoldError",
    "FoldHandle",
    "fold",
    "fold_maps",
    "fold_plan",
    "folded",
    "save_folded",
    "unfoldable_sites",
]

_STACK_ATTR = "_lineas_tl_folds"
# Containers whose ``hook_out`` is exactly the output of one of their linear submodules.
_OUTPUT_LINEAR = ("o", "out")


class FoldError(ValueError):
    """The requested maps cannot be written into the model's weights exactly."""


@dataclass(frozen=True)
class _Target:
    """Where a site's map folds: a linear layer, on its input or its output."""

    site: str
    linear: nn.Module
    side: str  # "in" | "out"
    stage: int  # order on the same layer: input, own output, container output, residual stream
    shift_only: bool = False  # a residual-stream site: only omega = 1 maps fold (see _target)


@dataclass
class FoldHandle:
    """The record of one fold; :meth:`undo` restores the model's exact original weights.

    Also a context manager: ``with steerer.fold(): ...`` undoes the fold on exit.

    Attributes:
        sites: the sites whose maps were folded.
        model: the model whose weights were rewritten.
    """

    model: Any = field(repr=False)
    sites: list[str] = field(default_factory=list)
    _saved: list[tuple[nn.Module, str, Tensor | None]] = field(default_factory=list, repr=False)
    active: bool = True

    def undo(self) -> None:
        """Restore every rewritten weight and bias bit for bit (and drop biases the fold created).

        Folds on one model must be undone in reverse order (the context manager does that).
        """
        if not self.active:
            return
        stack = _stack(self.model)
        if stack and stack[-1] is not self:
            raise RuntimeError("undo folds in reverse order: another fold was applied on this model after this one")
        _restore(self)
        if stack:
            stack.pop()

    def __enter__(self) -> FoldHandle:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.undo()


# --------------------------------------------------------------------------- planning
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
    return isinstance(module, nn.Linear) or _is_conv1d(module)


def _is_conv1d(module: nn.Module) -> bool:
    """Hugging Face's ``Conv1D`` (GPT-2 family): a linear layer storing its weight as ``[in, out]``."""
    return type(module).__name__ == "Conv1D" and isinstance(getattr(module, "weight", None), Tensor)


def _target(model: nn.Module, site: str) -> _Target | str:
    """Where ``site`` folds, or the reason it does not."""
    found = _parent_of(model, site)
    if found is None:
        return "not a hook point of this model"
    parent, attr = found
    core = _core(parent)
    if attr == "hook_in" and _is_linear(core):
        return _Target(site, core, "in", 0)
    if attr == "hook_out" and _is_linear(core):
        return _Target(site, core, "out", 1)
    if attr == "hook_out":
        for child in _OUTPUT_LINEAR:
            sub = getattr(parent, child, None)
            if isinstance(sub, nn.Module) and _is_linear(_core(sub)):
                return _Target(site, _core(sub), "out", 2)
    block = _BLOCK_HOOK.match(getattr(hook_points(model).get(site), "name", None) or site)
    if block is not None:
        # The residual stream between blocks (resid_pre of block L = resid_post of block L-1) is
        # resid_mid + mlp_out of block L-1: a shift there is the same shift on that MLP's output.
        layer = int(block.group(1)) - (1 if block.group(2) == "in" else 0)
        if layer < 0:
            return "the residual stream before the first block (embeddings); no linear layer to fold into"
        mlp_out = getattr(getattr(_block(model, layer), "mlp", None), "out", None)
        if isinstance(mlp_out, nn.Module) and _is_linear(_core(mlp_out)):
            return _Target(site, _core(mlp_out), "out", 3, shift_only=True)
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
        t = _target(model, site)
        if isinstance(t, str):
            out[site] = t
        else:
            out[site] = f"{t.side}put of {type(t.linear).__name__}" + (
                " (a shift on the residual stream: omega must be 1)" if t.shift_only else ""
            )
    return out


def unfoldable_sites(model: Any, sites: list[str]) -> dict[str, str]:
    """The sites among ``sites`` whose maps cannot be folded into weights, with the reason."""
    targets = {s: _target(model, s) for s in sites}
    return {s: t for s, t in targets.items() if isinstance(t, str)}


# --------------------------------------------------------------------------- folding
def effective_affine(m: AffineMap, strength: float = 1.0, inverse: bool = False) -> tuple[Tensor, Tensor]:
    r"""The flat ``(omega', b')`` (float64) of :math:`T^\lambda` (or its inverse) for map ``m``."""
    w = m.weight.detach().double().reshape(-1)
    b = m.bias.detach().double().reshape(-1)
    if inverse:
        return 1 + strength * (1 / w - 1), -strength * b / w
    return 1 + strength * (w - 1), strength * b


def fold_maps(
    model: Any,
    maps: Mapping[str, AffineMap],
    strength: float | Mapping[str, float] = 1.0,
    *,
    inverse: bool = False,
) -> FoldHandle:
    """Write ``maps`` (site -> map) into ``model``'s linear layers; returns the undo handle.

    Raises:
        FoldError: a site is not next to a linear layer, or a map's width does not match the layer.
    """
    per_site = dict(strength) if isinstance(strength, Mapping) else {s: float(strength) for s in maps}
    active = {s: m for s, m in maps.items() if float(per_site.get(s, 0.0)) != 0.0}
    targets = {s: _target(model, s) for s in active}
    bad = {s: t for s, t in targets.items() if isinstance(t, str)}
    if bad:
        listing = "; ".join(f"{s} ({why})" for s, why in bad.items())
        raise FoldError(
            f"cannot fold exactly into the weights at {len(bad)} site(s): {listing}. Only maps on the "
            "input or output of a linear layer fold (e.g. blocks.L.hook_attn_out, blocks.L.hook_mlp_out, "
            "blocks.L.attn.hook_z), and shifts on the residual stream after block 0; steer these sites "
            "with hooks instead (steerer.steer())."
        )
    order = {id(m): i for i, (_, m) in enumerate(model.named_modules())}
    ordered = sorted(
        (t for t in targets.values() if not isinstance(t, str)),
        key=lambda t: (order.get(id(t.linear), 0), t.stage),
    )
    scaled = [t.site for t in ordered if t.shift_only and bool((active[t.site].weight != 1).any())]
    if scaled:
        raise FoldError(
            f"the maps at {scaled} scale the residual stream (omega != 1): only a shift (as ActAdd's) "
            "folds there, into the previous block's MLP output bias; steer these sites with hooks"
        )
    handle = FoldHandle(model=model, sites=[t.site for t in ordered])
    seen: set[tuple[int, str]] = set()
    try:
        with torch.no_grad():
            for t in ordered:
                omega, shift = effective_affine(active[t.site], float(per_site[t.site]), inverse)
                _fold_one(t, omega, shift, handle, seen)
    except BaseException:
        _restore(handle)
        raise
    _stack(model).append(handle)
    return handle


def _save_once(handle: FoldHandle, seen: set[tuple[int, str]], module: nn.Module, name: str) -> None:
    key = (id(module), name)
    if key in seen:
        return
    seen.add(key)
    p = getattr(module, name, None)
    handle._saved.append((module, name, None if p is None else p.detach().clone()))


def _fold_one(t: _Target, omega: Tensor, shift: Tensor, handle: FoldHandle, seen: set[tuple[int, str]]) -> None:
    lin = t.linear
    weight: Tensor = lin.weight
    conv = _is_conv1d(lin)
    w64 = weight.detach().double()
    w_out_in = w64.T if conv else w64  # [out, in]
    n_out, n_in = w_out_in.shape
    width = n_in if t.side == "in" else n_out
    if omega.numel() != width:
        raise FoldError(
            f"the map at {t.site} has {omega.numel()} features but the {t.side}put of "
            f"{type(lin).__name__} has {width}: cannot fold"
        )
    omega, shift = omega.to(w64.device), shift.to(w64.device)
    bias = getattr(lin, "bias", None)
    b64 = (
        bias.detach().double()
        if isinstance(bias, Tensor)
        else torch.zeros(n_out, dtype=torch.float64, device=w64.device)
    )
    if t.side == "out":
        new_w = omega[:, None] * w_out_in
        new_b = omega * b64 + shift
    else:
        new_w = w_out_in * omega[None, :]
        new_b = b64 + w_out_in @ shift
    _save_once(handle, seen, lin, "weight")
    weight.copy_((new_w.T if conv else new_w).to(weight.dtype))
    if isinstance(bias, Tensor):
        _save_once(handle, seen, lin, "bias")
        bias.copy_(new_b.to(bias.dtype))
    elif bool((new_b != 0).any()):
        _save_once(handle, seen, lin, "bias")  # records None: undo deletes the created bias
        lin.bias = nn.Parameter(new_b.to(weight.dtype), requires_grad=False)


def _restore(handle: FoldHandle) -> None:
    with torch.no_grad():
        for module, name, original in reversed(handle._saved):
            if original is None:  # a bias the fold created
                setattr(module, name, None)
            else:
                getattr(module, name).copy_(original)
    handle.active = False


def _stack(model: Any) -> list[FoldHandle]:
    stack = model.__dict__.get(_STACK_ATTR)
    if stack is None:
        stack = []
        model.__dict__[_STACK_ATTR] = stack
    return stack


def fold(
    steerer: HookedSteerer,
    strength: float | Mapping[str, float] = 1.0,
    *,
    inverse: bool = False,
    check: bool = True,
) -> FoldHandle:
    """Write ``steerer``'s maps at ``strength`` into its model's weights; returns the undo handle.

    After this, the plain model computes what ``with steerer.steer(strength, inverse=inverse)``
    computes, with no hook at all. Use the returned :class:`FoldHandle` as a context manager or call
    its ``undo()`` to restore the exact original weights. Do not also activate the same steerer's
    hooks while it is folded (that would apply it twice). Folding several steerers one after the
    other composes like entering their ``steer()`` contexts in the same order, except where two of
    them share an input site (``hook_z``, ``mlp.hook_post``): there the later fold acts first.

    Args:
        steerer: a fitted steerer.
        strength: a float for every site or ``{site: float}`` (sites left out are not folded), as in
            :meth:`HookedSteerer.steer`.
        inverse: fold :math:`T^{-1}` instead of :math:`T`.
        check: compare the hooked and the folded model's logits on a short probe sequence, and undo
            and raise ``FoldError`` if they differ beyond float rounding (language models only).

    Raises:
        FoldError: a site cannot be folded exactly (the message lists them), or the check failed.
    """
    steerer._check_fitted()
    per_site = steerer._strengths(strength)
    model = steerer.model
    probe = _probe(steerer) if check else None
    expected = None
    if probe is not None:
        with torch.no_grad():
            expected = steerer.runner.forward(probe, steerer.hooks(per_site, inverse=inverse))
    handle = fold_maps(model, steerer.maps_, per_site, inverse=inverse)
    if probe is not None and isinstance(expected, Tensor):
        with torch.no_grad():
            got = steerer.runner.forward(probe, [])
        tol = 1e-4 * (1.0 + float(expected.abs().max()))
        err = float((got - expected).abs().max())
        if not err <= tol:
            handle.undo()
            raise FoldError(
                f"folding did not reproduce the hooked model on a probe sequence (max |diff| {err:.3g} > "
                f"{tol:.3g}) for sites {handle.sites}: this architecture computes something between the "
                "linear layer and the hook. The fold was undone; steer with hooks instead."
            )
    return handle


@contextlib.contextmanager
def folded(
    steerer: HookedSteerer,
    strength: float | Mapping[str, float] = 1.0,
    *,
    inverse: bool = False,
    check: bool = True,
) -> Iterator[FoldHandle]:
    """Context manager: the maps folded into the weights inside, the exact weights restored on exit."""
    handle = fold(steerer, strength, inverse=inverse, check=check)
    try:
        yield handle
    finally:
        handle.undo()


def _probe(steerer: HookedSteerer) -> Any | None:
    from lineas_tl.runner import LanguageModelRunner

    runner = steerer.runner
    if not isinstance(runner, LanguageModelRunner):
        return None
    cfg = getattr(steerer.model, "cfg", None)
    vocab = int(getattr(cfg, "d_vocab", 0) or 0)
    ids = [(7 * i + 3) % vocab for i in range(8)] if vocab > 0 else [0] * 8
    return runner.prepare([ids]).batch([0])


# --------------------------------------------------------------------------- export
def save_folded(
    steerer: HookedSteerer,
    path: str | os.PathLike[str],
    strength: float | Mapping[str, float] = 1.0,
    *,
    inverse: bool = False,
) -> Path:
    """Write the steered model, maps folded into its weights, as a plain Hugging Face model directory.

    The directory loads with ``AutoModelForCausalLM.from_pretrained(path)`` (and so in any serving
    stack that reads Hugging Face checkpoints, or converts them, e.g. to GGUF) and computes the steered
    model with no lineas-tl code. The model's weights in memory are restored on return.

    Where a fold needs a bias the architecture lacks (Llama's ``o_proj`` / ``down_proj``), the config's
    own switch is turned on (``attention_bias`` / ``mlp_bias``) and the other projections it governs
    get zero biases, which is exact. Before the directory is moved into place, it is reloaded and its
    logits compared with the hooked model's on a probe sequence.

    Args:
        steerer: a fitted steerer on a ``TransformerBridge`` over a Hugging Face model.
        path: a new (or empty) directory.
        strength, inverse: as in :func:`fold`.

    Raises:
        FoldError: a site cannot be folded, the architecture cannot hold a needed bias, or the
            reloaded model does not reproduce the steered one.
        FileExistsError: ``path`` exists and is not an empty directory.
    """
    from transformers import AutoModelForCausalLM

    target = Path(path).expanduser()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"{target} exists and is not an empty directory; choose a new path")
    hf = getattr(steerer.model, "original_model", None)
    if not isinstance(hf, nn.Module) or not hasattr(hf, "config"):
        raise FoldError(
            f"{type(steerer.model).__name__} does not wrap a Hugging Face model; save_folded needs a "
            "TransformerBridge booted from transformers"
        )
    probe = _probe(steerer)
    if probe is None:
        raise FoldError("save_folded supports language models only")
    tokens = probe.kwargs["input"]
    with torch.no_grad():
        expected = steerer.runner.forward(probe, steerer.hooks(steerer._strengths(strength), inverse=inverse))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        with fold(steerer, strength, inverse=inverse) as handle:
            names = {id(m): n for n, m in hf.named_modules(remove_duplicate=False)}
            created = [
                _clean_key(names[id(module)]) + "." + name
                for module, name, original in handle._saved
                if original is None and id(module) in names
            ]
            state = {}
            for key, value in hf.state_dict().items():
                state.setdefault(_clean_key(key), value.detach().clone())
        cfg = hf.config.to_dict()
        cfg.update(output_attentions=False, output_hidden_states=False)  # runtime flags the bridge sets
        config = type(hf.config).from_dict(cfg)
        for key in created:
            flag = "mlp_bias" if ".mlp." in key else "attention_bias"
            if not hasattr(config, flag):
                raise FoldError(
                    f"the fold created the bias {key}, but {type(config).__name__} has no "
                    f"`{flag}` switch to store it: this model cannot be exported folded; keep the "
                    "fold in memory (steerer.fold()) or steer with hooks"
                )
            setattr(config, flag, True)
        fresh = AutoModelForCausalLM.from_config(config).to(dtype=next(hf.parameters()).dtype)
        wanted = fresh.state_dict()
        missing = [k for k in wanted if k not in state]
        not_bias = [k for k in missing if not k.endswith(".bias")]
        if not_bias:
            raise FoldError(f"cannot map the bridge's weights back to {type(fresh).__name__}: missing {not_bias[:5]}")
        for key in missing:
            state[key] = torch.zeros_like(wanted[key])
        fresh.load_state_dict({k: state[k] for k in wanted}, strict=True)
        fresh.save_pretrained(tmp)
        tokenizer = getattr(steerer.model, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        reloaded = AutoModelForCausalLM.from_pretrained(tmp).eval()
        with torch.no_grad():
            got = reloaded(tokens.to(next(reloaded.parameters()).device)).logits
        err = float((got.to(expected.device) - expected).abs().max())
        tol = 1e-4 * (1.0 + float(expected.abs().max()))
        if not err <= tol:
            raise FoldError(
                f"the exported model does not reproduce the steered model (max |diff| {err:.3g} > "
                f"{tol:.3g}); nothing was written"
            )
        os.replace(tmp, target) if target.exists() else os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _clean_key(key: str) -> str:
    """A bridge-wrapped Hugging Face parameter name back to the plain model's name."""
    return key.replace("._original_component", "").replace("_original_component.", "")
