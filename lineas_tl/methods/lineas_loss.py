"""What LinEAS's transport loss reads: the loss of fixed maps, the target sorted once, and which
coordinates of each site the loss compares (every one, or only those ``restrict`` lets the maps move).

``fit(..., restrict=..., loss_on="restricted")`` is not the paper's loss. With maps restricted to a
few heads, the paper's loss still sums the mismatch of every head at those sites (8 of 9 heads per
site for one chosen head on SmolLM2), which the maps reach only through their downstream effect;
reading only the moved coordinates makes each map match its own heads' target distribution, still
end to end (a moved head downstream sees every upstream map).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from lineas_tl.collect import pooled_forward
from lineas_tl.losses import Backend, global_loss

Reader = Callable[[dict[str, Tensor]], dict[str, Tensor]]


def coordinate_reader(masks: Mapping[str, Tensor], loss_on: str) -> Reader:
    """The columns of each site's pooled ``[n, features]`` activations that the loss compares.

    ``loss_on="sites"`` (the paper's): every column. ``"restricted"``: at a site with a ``restrict``
    mask only the masked coordinates (flattened in the site's feature order), elsewhere every column.

    Raises:
        SteeringInputError: ``"restricted"`` without any ``restrict`` mask.
    """
    from lineas_tl.validate import SteeringInputError

    if loss_on == "sites":
        return lambda acts: acts
    if not masks:
        raise SteeringInputError(
            "loss_on='restricted' reads the loss only where restrict= lets the maps move, but no restrict "
            "masks were given: pass restrict={site: mask} (e.g. lineas_tl.methods.iti.head_masks) or loss_on='sites'"
        )
    columns = {s: m.flatten().nonzero().squeeze(1) for s, m in masks.items()}

    def read(acts: dict[str, Tensor]) -> dict[str, Tensor]:
        return {s: x.index_select(1, columns[s].to(x.device)) if s in columns else x for s, x in acts.items()}

    return read


def loss_of(ctx: Any, target: dict[str, Tensor], bs: int, backend: Backend, read: Reader,
            maps: Mapping[str, Any] | None = None, all_targets: bool = False) -> float:  # fmt: skip
    """The loss of ``maps`` (None: the identity, i.e. the untouched model) on the first ``bs``
    source prompts, against the first ``bs`` target prompts (all of them with ``all_targets``);
    ``target`` is already read by ``read``."""
    with torch.no_grad():
        batch = ctx.source.batch(list(range(bs)))
        source, _ = pooled_forward(ctx.runner, batch, ctx.sites, ctx.pooling, maps)
        full = ctx.pooling == "all" or all_targets
        tgt = target if full else {s: v[:bs] for s, v in target.items()}
        return float(global_loss(read(source), tgt, backend)[0])


def presort_targets(target: dict[str, Tensor], bs: int, n_t: int, full: bool, backend: Backend) -> dict[str, Tensor]:
    """Each site's target rows sorted once, when every step compares against all of them with the
    sort backend (empty otherwise): sorting a permutation of the rows gives the same values."""
    if full or bs != n_t or backend not in ("auto", "sort"):
        return {}
    return {s: v.sort(dim=0).values for s, v in target.items()}
