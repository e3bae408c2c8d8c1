"""Which heads `run_gate_results.py --sites iti_heads` / `iti_heads_cv` restricts LinEAS to.

``iti_heads``: the heads the compared ITI-c selects (one probe split, seeded as ``compare`` seeds
it). ``iti_heads_cv`` (stop 35): ITI-c refitted on five probe splits of the same prompts (seeds S,
S+1000, ..., S+4000), the heads ranked by their probes' mean held-out accuracy over the five, the
same count kept. One 4:1 split scores each probe on about 13 prompts, so accuracies tie and the
choice moves with the split (`iti_head_overlap.md`); the mean over five splits is a steadier ranking.
``lineas_heads`` (stop 36): LinEAS's own choice. One ungated LinEAS fit at every block's
``attn.hook_z`` with a group lasso whose groups are the heads (``group_by="head"``, ``l1=0``,
``gamma=1``), the heads ranked by their group's final norm, at most as many as ITI-c's kept (and
only heads the penalty left on). On sentiment's seed-0 draw gamma 0 and 0.3 keep all 270 heads (the
top of their rankings holds layer 0's), 1 keeps 122, 3 keeps one and 10 none.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lineas_tl import HookedSteerer


def probe_heads(model: Any, source: list[str], target: list[str], pooling: str, seed: int, splits: int = 1) -> list[list[int]]:
    """``[layer, head]`` pairs: ITI-c's own choice (``splits=1``) or the best by mean held-out
    accuracy over ``splits`` probe splits."""
    fits = [HookedSteerer(model, pooling=pooling).fit(source, target, method="iti", seed=seed + 1000 * i, progress=False).history_
            for i in range(splits)]  # fmt: skip
    if splits == 1:
        return fits[0]["heads"]
    accuracy = np.mean([np.asarray(h["val_accuracy"]) for h in fits], axis=0)  # [n_layers, n_heads]
    return _top(accuracy, fits[0]["k"])


def lineas_heads(model: Any, source: list[str], target: list[str], pooling: str, seed: int, k: int = 13,
                 gamma: float = 1.0) -> tuple[list[list[int]], dict[str, Any]]:  # fmt: skip
    """The ``k`` heads whose maps a head-grouped sparse LinEAS fit moves most, and that fit's history."""
    from lineas_tl.methods.iti import z_sites

    sites = z_sites(model, range(model.cfg.n_layers))  # canonical names, as the history keys them
    history = HookedSteerer(model, sites=sites, pooling=pooling).fit(
        source, target, method="lineas", gamma=gamma, l1=0.0, group_by="head", seed=seed, progress=False, warn=False).history_
    norms = np.asarray([history["group_norms"][site] for site in sites])  # [n_layers, n_heads]
    return _top(norms, k, above=0.0), history  # only heads the fit kept


def _top(values: np.ndarray, k: int, above: float = -np.inf) -> list[list[int]]:
    """The ``[layer, head]`` pairs of the ``k`` largest ``values`` (``[n_layers, n_heads]``) that
    exceed ``above``, largest first (ties: the earlier head)."""
    best = [int(i) for i in np.argsort(-values, axis=None, kind="stable")[:k] if values.flat[i] > above]
    return [[i // values.shape[1], i % values.shape[1]] for i in best]
