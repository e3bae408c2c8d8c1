"""Split a loaded TransformerLens model across devices by blocks, e.g. ``cuda:0`` and ``cpu``.

``lineas_tl.models.load(..., device_map=..., n_devices=...)`` lets TransformerLens and accelerate
place the weights; TransformerLens 4.3 takes GPU-only maps there (it treats a ``"cpu"`` entry of a
GPU map as offloaded weights, and refuses the mix). :func:`split` places an already loaded model
itself: the embedding and the first blocks on the first device, later blocks on later devices, and
each block moves its inputs to its own device (a forward pre-hook), so the activations really are
computed where the weights are. It works on one GPU plus the CPU, which is how the tests and
``benchmarks/device_check.py`` exercise a two-device fit on a one-GPU machine.

Fitting needs nothing else: each steering map is created on the device of its site's activation,
the token batches go to the embedding's device, and the loss is reduced on the first site's device.

Example:
    >>> model = split(models.load("smollm2"), {"cuda:0": 15, "cpu": 15})
    >>> HookedSteerer(model).fit(source, target)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

_HANDLES = "_lineas_split_handles"


def _to(x: Any, device: torch.device) -> Any:
    """``x`` with every tensor inside (tuples, lists, dicts) moved to ``device``; other objects kept."""
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, tuple):
        return tuple(_to(v, device) for v in x)
    if isinstance(x, list):
        return [_to(v, device) for v in x]
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    return x


def _move_inputs(device: torch.device) -> Any:
    def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return _to(args, device), _to(kwargs, device)

    return pre_hook


def _tied(a: nn.Module, b: nn.Module) -> bool:
    ids = {id(p) for p in a.parameters()}
    return any(id(p) in ids for p in b.parameters())


def split(model: Any, layout: Mapping[str | torch.device, int]) -> Any:
    """Place ``model``'s blocks on devices in order, ``layout[device]`` blocks each; returns ``model``.

    Args:
        model: a TransformerLens model with ``embed``, ``blocks`` and (optionally) ``ln_final`` and
            ``unembed``, on one device.
        layout: ``{device: number of blocks}`` in forward order, summing to the number of blocks.
            The embedding goes to the first device; the final norm and unembedding to the last,
            unless the unembedding shares its weight with the embedding (tied), then to the first.

    Calling it again re-places the model (the previous placement's hooks are removed first).
    """
    blocks = getattr(model, "blocks", None)
    if blocks is None or not hasattr(model, "embed"):
        raise TypeError(f"{type(model).__name__} has no `embed` and `blocks`; split needs a TransformerLens model")
    counts = [(torch.device(d), int(n)) for d, n in layout.items()]
    if not counts or any(n < 0 for _, n in counts) or sum(n for _, n in counts) != len(blocks):
        raise ValueError(
            f"layout {dict(layout)} must give a non-negative number of blocks per device, summing to the "
            f"model's {len(blocks)} blocks"
        )
    for handle in getattr(model, _HANDLES, []):
        handle.remove()
    first, last = counts[0][0], counts[-1][0]
    model.to(first)
    handles = []
    i = 0
    for device, n in counts:
        for block in list(blocks)[i : i + n]:
            block.to(device)
            handles.append(block.register_forward_pre_hook(_move_inputs(device), with_kwargs=True))
        i += n
    head_device = first if _tied(model.embed, getattr(model, "unembed", nn.Module())) else last
    for name in ("ln_final", "unembed"):
        module = getattr(model, name, None)
        if isinstance(module, nn.Module):
            module.to(head_device)
            handles.append(module.register_forward_pre_hook(_move_inputs(head_device), with_kwargs=True))
    object.__setattr__(model, _HANDLES, handles)
    return model


def block_devices(model: Any) -> list[torch.device]:
    """The device of each block's first parameter (CPU for a block without parameters)."""
    return [next(iter(b.parameters()), torch.empty(0)).device for b in model.blocks]
