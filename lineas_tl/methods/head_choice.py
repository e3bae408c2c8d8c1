"""LinEAS's own choice of attention heads: a head-grouped sparse fit, ranked by how far it moves each.

:func:`lineas_heads` fits ungated LinEAS at every block's ``attn.hook_z`` with the sparse group
lasso's groups set to the heads (``group_by="head"``, ``l1=0``) and keeps the ``k`` heads whose maps
it moved most (their group's final norm), largest first. :func:`lineas_tl.methods.iti.head_masks`
turns them into ``restrict=`` masks for a second fit that moves only those heads::

    heads = lineas_heads(model, source, target)           # [[layer, head], ...], ITI's count by default
    masks = head_masks(model, heads)
    steerer = HookedSteerer(model, sites=list(masks)).fit(source, target, restrict=masks)

This is not the paper's recipe (its groups are the sites, and it moves every coordinate of them).
On SmolLM2's sentiment the heads it picks are steadier across draws of the fit prompts than ITI-c's
probes', and gated LinEAS restricted to them is lower than at the default sites
(``results/gate/README.md``, stops 36 and 38).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lineas_tl.methods.iti import default_k, z_sites
from lineas_tl.steerer import HookedSteerer
from lineas_tl.validate import SteeringInputError

DEFAULT_GAMMA: float = 1.0
"""The selection fit's sparsity: on SmolLM2's sentiment draw (30 blocks x 9 heads) gamma 0 and 0.3
keep every head, 1 keeps 122, 3 one and 10 none (``results/gate/README.md``, stop 36)."""


def top_k_heads(values: np.ndarray, k: int, above: float = -np.inf) -> list[list[int]]:
    """The ``[layer, head]`` pairs of the ``k`` largest ``values`` (``[n_layers, n_heads]``), largest
    first (ties: the earlier head), dropping any of them not above ``above``."""
    best = [int(i) for i in np.argsort(-values, axis=None, kind="stable")[:k] if values.flat[i] > above]
    return [[i // values.shape[1], i % values.shape[1]] for i in best]


def head_norms(steerer: Any) -> np.ndarray:
    """``[n_layers, n_heads]``: each head's group norm in a ``group_by="head"`` LinEAS fit at every
    block's ``attn.hook_z`` (``steerer.history_["group_norms"]``).

    Raises:
        SteeringInputError: the steerer was not fitted that way.
    """
    norms = getattr(steerer, "history_", {}).get("group_norms") or {}
    sites = z_sites(steerer.model)  # each block's canonical hook_z name, as the history keys it
    if not all(len(norms.get(site, ())) > 1 for site in sites):
        raise SteeringInputError(
            "ranking heads needs a LinEAS fit with group_by='head' at every block's attn.hook_z: "
            "use lineas_heads(model, source, target), or fit HookedSteerer(model, sites=z_sites(model)) "
            "with method='lineas', group_by='head'"
        )
    return np.asarray([norms[site] for site in sites], dtype=float)


def head_selection_fit(model: Any, source: Sequence[Any], target: Sequence[Any], *, gamma: float = DEFAULT_GAMMA,
                       pooling: str = "mean", seed: int = 0, **fit_kwargs: Any) -> Any:  # fmt: skip
    """The ungated, head-grouped sparse LinEAS fit (``l1=0``) at every block's ``attn.hook_z`` that
    :func:`lineas_heads` ranks; ``fit_kwargs`` go to ``fit`` (e.g. ``progress=False``)."""
    steerer = HookedSteerer(model, sites=z_sites(model), pooling=pooling)
    return steerer.fit(source, target, method="lineas", gamma=gamma, l1=0.0, group_by="head", seed=seed, **fit_kwargs)


def lineas_heads(model: Any, source: Sequence[Any], target: Sequence[Any], k: int | None = None, *,
                 gamma: float = DEFAULT_GAMMA, pooling: str = "mean", seed: int = 0, **fit_kwargs: Any) -> list[list[int]]:  # fmt: skip
    """The (at most) ``k`` heads a head-grouped sparse LinEAS fit moves most, as ``[layer, head]``
    pairs, largest norm first; only heads the penalty left on.

    Args:
        model: a TransformerLens model with ``blocks.L.attn.hook_z`` hook points.
        source, target: the fit prompts, as for ``fit``.
        k: how many heads; default ITI's share of the model's heads (13 of SmolLM2's 270).
        gamma: the selection fit's sparsity (:data:`DEFAULT_GAMMA`); a larger one switches more heads off.
        pooling, seed, fit_kwargs: the selection fit's, as for ``HookedSteerer`` and ``fit``.

    Raises:
        SteeringInputError: ``k < 1``, or ``gamma`` switched every head off (pass a smaller one).
    """
    n_total = int(model.cfg.n_layers) * int(model.cfg.n_heads)
    k = default_k(n_total) if k is None else k
    if not 1 <= k <= n_total:
        raise SteeringInputError(f"k={k} heads: pass 1 <= k <= {n_total} (the model's heads)")
    heads = top_k_heads(head_norms(head_selection_fit(model, source, target, gamma=gamma, pooling=pooling, seed=seed, **fit_kwargs)), k, above=0.0)
    if not heads:
        raise SteeringInputError(f"gamma={gamma:g} switched every head off: pass a smaller gamma")
    return heads
