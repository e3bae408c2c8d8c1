"""A concept planted in chosen attention heads of a tiny model, for tests of head selection.

Source and target prompts come from the same distribution of random token ids; while
:func:`planted_heads` is active, a hook adds a constant vector to the chosen heads' ``hook_z`` for
source prompts only (recognised by their token ids), so those heads alone tell the two apart.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch


def random_prompts(n: int, seed: int) -> list[list[int]]:
    """``n`` prompts of 4-9 random token ids in [3, 100)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 100, (int(k),), generator=g).tolist() for k in torch.randint(4, 10, (n,), generator=g)]


@contextmanager
def planted_heads(model: Any, source: list[list[int]], heads: Sequence[tuple[int, int]], delta: torch.Tensor) -> Iterator[None]:
    """Add ``delta`` (``[d_head]``) to each ``(layer, head)``'s ``hook_z`` on ``source`` prompts' rows."""
    source_keys = {tuple(s) for s in source}
    is_source: dict[str, torch.Tensor] = {}

    def read_batch(module, args, kwargs):
        tokens, mask = args[0], kwargs["attention_mask"]
        rows = [tuple(t[m.bool()].tolist()) for t, m in zip(tokens, mask, strict=True)]
        is_source["rows"] = torch.tensor([r in source_keys for r in rows])

    def plant(head: int):
        def hook(act, hook):
            act = act.clone()
            act[is_source["rows"], :, head] += delta
            return act

        return hook

    handle = model.register_forward_pre_hook(read_batch, with_kwargs=True)
    try:
        with model.hooks(fwd_hooks=[(f"blocks.{layer}.attn.hook_z", plant(head)) for layer, head in heads]):
            yield
    finally:
        handle.remove()
