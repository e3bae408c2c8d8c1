"""Activation checkpointing for fitting: bound the memory of the backward pass through a frozen model.

LinEAS's loss reaches every map through all the blocks downstream of it, so a fit step's backward
pass needs every block's intermediate activations: memory grows with depth x batch x tokens. Under
:func:`activation_checkpointing`, each transformer block keeps only its input and recomputes its
inside during the backward pass (``torch.utils.checkpoint``, non-reentrant, so gradients still reach
the maps applied by hooks inside the block). It costs about one more forward pass per step. The
hooks attached at forward time (steering and pooling) are put back while a block is recomputed in
the backward pass, since by then ``model.hooks(...)`` has removed them.

A block called with a KV cache runs without checkpointing (recomputing it would write the cache
twice); the runner's fitting and collection passes run without a cache (``use_cache=False``).

The recomputation fires the block's hooks a second time: the steering hooks compute the same values
again (they are deterministic), and the pooling recorders overwrite what they stored with the same
values, so the fitted maps are the same as without checkpointing (within float tolerance).

Example:
    >>> with activation_checkpointing(model):
    ...     steerer.fit(source, target)
"""

from __future__ import annotations

import contextlib
import functools
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

_MISSING = object()
_CACHE_KWARGS = ("past_key_values", "past_key_value", "layer_past")
_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
)


def transformer_blocks(model: Any) -> list[nn.Module]:
    """The model's transformer blocks (``model.blocks``, as in TransformerLens); a clear error otherwise."""
    blocks = getattr(model, "blocks", None)
    if blocks is None or not all(isinstance(b, nn.Module) for b in blocks) or len(blocks) == 0:
        raise TypeError(
            f"{type(model).__name__} has no `blocks` (a list of transformer block modules), so activation "
            "checkpointing does not know what to recompute; use a TransformerLens model"
        )
    return list(blocks)


def _hooks_of(block: nn.Module) -> list[tuple[nn.Module, dict[str, OrderedDict]]]:
    """A copy of every forward (pre-)hook registered on ``block`` or its submodules."""
    out = []
    for module in block.modules():
        dicts = {name: getattr(module, name, None) for name in _HOOK_DICTS}
        if any(d for d in dicts.values()):
            out.append((module, {name: OrderedDict(d) for name, d in dicts.items() if d is not None}))
    return out


@contextlib.contextmanager
def _installed(hooks: list[tuple[nn.Module, dict[str, OrderedDict]]]) -> Iterator[None]:
    """Put back the hooks seen at forward time, for the length of a recomputation."""
    current = [(m, {name: getattr(m, name) for name in d}) for m, d in hooks]
    try:
        for module, dicts in hooks:
            for name, d in dicts.items():
                setattr(module, name, OrderedDict(d))
        yield
    finally:
        for module, dicts in current:
            for name, d in dicts.items():
                setattr(module, name, d)


def _checkpointed(block: nn.Module, forward: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(forward)
    def run(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():  # nothing to save memory on: run as usual
            return forward(*args, **kwargs)
        if any(kwargs.get(k) is not None for k in _CACHE_KWARGS):
            # A KV cache is state: recomputing the block would append its keys and values twice.
            return forward(*args, **kwargs)
        # The steering hooks are attached only for the forward call (``model.hooks(...)``); the
        # backward pass recomputes the block after they are gone, so it re-installs them.
        hooks = _hooks_of(block)

        def body(*a: Any, **k: Any) -> Any:
            with _installed(hooks):
                return forward(*a, **k)

        return checkpoint(body, *args, use_reentrant=False, **kwargs)

    return run


@contextlib.contextmanager
def activation_checkpointing(model: Any, enabled: bool = True) -> Iterator[Any]:
    """Run each of ``model``'s transformer blocks under ``torch.utils.checkpoint`` while active.

    Each block's ``forward`` is wrapped on entry and restored on exit (even on error). With
    ``enabled=False`` this is a no-op, so callers can pass a flag through. Under ``torch.no_grad()``
    the blocks run as usual.
    """
    if not enabled:
        yield model
        return
    saved = []
    try:
        for block in transformer_blocks(model):
            saved.append((block, block.__dict__.get("forward", _MISSING)))
            # Through __dict__: some modules (TransformerLens bridges) forward attribute writes to
            # the module they wrap.
            block.__dict__["forward"] = _checkpointed(block, block.forward)
        yield model
    finally:
        for block, old in saved:
            if old is _MISSING:
                block.__dict__.pop("forward", None)
            else:
                block.__dict__["forward"] = old
