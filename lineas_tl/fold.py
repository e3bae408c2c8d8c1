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
- on the input of **every** linear layer that reads a sublayer's input, each as above: the output
  of a pre-LN block's norm, ``blocks.L.ln2.hook_out`` (= ``blocks.L.mlp.hook_in``; the LinEAS
  paper's site), into ``gate_proj`` and ``up_proj`` (GPT-2: ``c_fc``), and ``blocks.L.ln1.hook_out``
  (= ``blocks.L.attn.hook_in``) into ``q_proj``, ``k_proj``, ``v_proj`` (GPT-2: ``c_attn``);
- a pure **shift** (:math:`\omega = 1`, e.g. ActAdd) on the residual stream between blocks
  (``blocks.L.hook_resid_pre`` = ``blocks.L-1.hook_resid_post``, :math:`L \ge 1`): the residual
  there is ``resid_mid + mlp_out`` of block :math:`L-1`, so the shift goes into that block's MLP
  down-projection bias.

Both ``torch.nn.Linear`` (weight ``[out, in]``) and Hugging Face's ``Conv1D`` (GPT-2; weight
``[in, out]``) are handled. A layer without a bias (Llama's projections) gets a
bias ``Parameter`` only when the folded bias is non-zero; :meth:`FoldHandle.undo` removes it again.
Sites anywhere else (after a nonlinearity, a post-sublayer norm such as Gemma-2's ``ln1_post``,
which writes to the residual stream, a norm's ``hook_normalized``, ...) cannot be folded exactly:
:func:`fold` refuses them with the list. Token-position-restricted steering
(``positions="prompt"``) cannot be folded either: weights act on every position; nor can maps that
carry their own restriction (a support range, front positions only; see :func:`map_refusal`).
Where each site folds is decided in :mod:`lineas_tl.fold_sites`; writing a folded model to disk
(Hugging Face, GGUF, llama.cpp control vector) is :mod:`lineas_tl.export`.

By default the fold is checked: one short probe sequence is run through the hooked model and
through the folded one, and any disagreement undoes the fold and raises.

Example:
    >>> with steerer.fold(strength=0.8):          # weights rewritten here ...
    ...     text = model.generate("The man said", max_new_tokens=20)
    >>> # ... and restored bit for bit here. Or keep it: handle = steerer.fold(); handle.undo()
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from lineas_tl.fold_sites import FoldTarget, fold_order, fold_plan, fold_target, is_conv1d, unfoldable_sites
from lineas_tl.maps import AffineMap

__all__ = [
    "FoldError",
    "FoldHandle",
    "FoldTarget",
    "Steerable",
    "effective_affine",
    "fold",
    "fold_maps",
    "fold_order",
    "fold_plan",
    "folded",
    "map_refusal",
    "probe_batch",
    "site_strengths",
    "unfoldable_sites",
]

_STACK_ATTR = "_lineas_tl_folds"


class FoldError(ValueError):
    """The requested maps cannot be written into the model's weights exactly."""


class Steerable(Protocol):
    """What folding needs from a steerer (a :class:`~lineas_tl.steerer.HookedSteerer` is one)."""

    model: Any
    runner: Any
    maps_: Mapping[str, AffineMap]

    def fwd_hooks(self, strength: Any = 1.0, *, inverse: bool = False) -> list[tuple[str, Any]]: ...


def ungated_view(steerer: Any, ungated: bool, what: str) -> Any:
    """``steerer`` itself if it has no gate; a copy without its gate if ``ungated``; else FoldError."""
    if getattr(steerer, "gate_", None) is None:
        return steerer
    if not ungated:
        raise FoldError(
            f"this steerer is gated: each token's steering is scaled by probes of the input's activations "
            f"(the gate depends on the input), and weights act on every input alike, so {what} cannot "
            f"write it. Serve it with hooks (steerer.steer() / generate()), or pass ungated=True to {what} "
            "the maps without the gate (every token steered, as an ungated steerer)."
        )
    import copy

    plain = copy.copy(steerer)
    plain.gate_ = None
    return plain


def site_strengths(steerer: Steerable, strength: Any, *, inverse: bool = False) -> dict[str, float]:
    """``{site: float}`` for every map, resolved the way ``steerer.steer(strength)`` resolves it."""
    return {site: float(hook.strength) for site, hook in steerer.fwd_hooks(strength, inverse=inverse)}


def map_refusal(m: AffineMap) -> str | None:
    """Why ``m`` cannot be written into weights (it does not act on every token alike), or None.

    A map restricted to a per-coordinate support range (``lo``/``hi``, Linear-AcT's ``q_0_100``) or
    to some token positions (ActAdd's ``kind="front"``) is not affine on every token; weights are.
    """
    blocker = getattr(m, "fold_blocker", None)
    why = blocker() if callable(blocker) else None
    if why:
        return str(why)
    if getattr(m, "lo", None) is not None or getattr(m, "hi", None) is not None:
        return "it applies only inside the source range seen at fit time (a support range)"
    if getattr(m, "kind", None) == "front" or getattr(m, "n_front", None) is not None:
        return "it steers the prompt's first positions only"
    return None


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
    refused = {s: why for s, m in active.items() if (why := map_refusal(m)) is not None}
    if refused:
        listing = "; ".join(f"{s}: {why}" for s, why in refused.items())
        raise FoldError(
            f"cannot fold {len(refused)} map(s) into weights, which act on every token alike: {listing}. "
            "Steer with hooks instead (steerer.steer()), or refit without the restriction."
        )
    targets = {s: fold_target(model, s) for s in active}
    bad = {s: t for s, t in targets.items() if isinstance(t, str)}
    if bad:
        listing = "; ".join(f"{s} ({why})" for s, why in bad.items())
        raise FoldError(
            f"cannot fold exactly into the weights at {len(bad)} site(s): {listing}. Only maps on the "
            "input or output of linear layers fold (e.g. blocks.L.hook_attn_out, blocks.L.hook_mlp_out, "
            "blocks.L.attn.hook_z, blocks.L.ln2.hook_out), and shifts on the residual stream after "
            "block 0; steer these sites with hooks instead (steerer.steer())."
        )
    ordered = fold_order(model, [t for t in targets.values() if not isinstance(t, str)])
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
                for lin in t.linears:
                    _fold_one(t, lin, omega, shift, handle, seen)
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


def _fold_one(
    t: FoldTarget, lin: nn.Module, omega: Tensor, shift: Tensor, handle: FoldHandle, seen: set[tuple[int, str]]
) -> None:
    weight: Tensor = lin.weight
    conv = is_conv1d(lin)
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
    steerer: Steerable,
    strength: float | Mapping[str, float] = 1.0,
    *,
    inverse: bool = False,
    check: bool = True,
    ungated: bool = False,
) -> FoldHandle:
    """Write ``steerer``'s maps at ``strength`` into its model's weights; returns the undo handle.

    After this, the plain model computes what ``with steerer.steer(strength, inverse=inverse)``
    computes, with no hook at all. Use the returned :class:`FoldHandle` as a context manager or call
    its ``undo()`` to restore the exact original weights. Do not also activate the same steerer's
    hooks while it is folded (that would apply it twice). Folding several steerers one after the
    other composes like entering their ``steer()`` contexts in the same order, except where two of
    them share an input site (``hook_z``, ``mlp.hook_post``, ``ln2.hook_out``): there the later fold
    acts first.

    Args:
        steerer: a fitted steerer.
        strength: a float for every site or ``{site: float}`` (sites left out are not folded), as in
            :meth:`HookedSteerer.steer`.
        inverse: fold :math:`T^{-1}` instead of :math:`T`.
        check: compare the hooked and the folded model's logits on a short probe sequence, and undo
            and raise ``FoldError`` if they differ beyond float rounding (language models only).

    Raises:
        FoldError: a site cannot be folded exactly (the message lists them), or the check failed,
            or the steerer is gated and ``ungated`` is False.

    A gated steerer (``fit(..., gate=True)``) scales each token's steering by a probe of that
    token's input, which no weight can do: pass ``ungated=True`` to fold its maps without the gate
    (every token steered at ``strength``, as the ungated steerer would).
    """
    steerer = ungated_view(steerer, ungated, "fold")
    per_site = site_strengths(steerer, strength, inverse=inverse)
    model = steerer.model
    probe = probe_batch(steerer) if check else None
    expected = None
    if probe is not None:
        with torch.no_grad():
            expected = steerer.runner.forward(probe, steerer.fwd_hooks(per_site, inverse=inverse))
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
    steerer: Steerable,
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


def probe_batch(steerer: Steerable) -> Any | None:
    """A short fixed token sequence as a runner batch (language models only; else None)."""
    from lineas_tl.runner import LanguageModelRunner

    runner = steerer.runner
    if not isinstance(runner, LanguageModelRunner):
        return None
    cfg = getattr(steerer.model, "cfg", None)
    vocab = int(getattr(cfg, "d_vocab", 0) or 0)
    ids = [(7 * i + 3) % vocab for i in range(8)] if vocab > 0 else [0] * 8
    return runner.prepare([ids]).batch([0])
