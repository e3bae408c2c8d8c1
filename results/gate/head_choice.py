"""Which heads `run_gate_results.py --sites iti_heads` / `iti_heads_cv` restricts LinEAS to.

``iti_heads``: the heads the compared ITI-c selects (one probe split, seeded as ``compare`` seeds
it). ``iti_heads_cv`` (stop 35): ITI-c refitted on five probe splits of the same prompts (seeds S,
S+1000, ..., S+4000), the heads ranked by their probes' mean held-out accuracy over the five, the
same count kept. One 4:1 split scores each probe on about 13 prompts, so accuracies tie and the
choice moves with the split (`iti_head_overlap.md`); the mean over five splits is a steadier ranking.
``lineas_heads`` (stop 36; in the library since stop 39, `lineas_tl.methods.head_choice`): LinEAS's own choice. One ungated LinEAS fit at every block's
``attn.hook_z`` with a group lasso whose groups are the heads (``group_by="head"``, ``l1=0``,
``gamma=1``), the heads ranked by their group's final norm, at most as many as ITI-c's kept (and
only heads the penalty left on). On sentiment's seed-0 draw gamma 0 and 0.3 keep all 270 heads (the
top of their rankings holds layer 0's), 1 keeps 122, 3 keeps one and 10 none.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lineas_tl import HookedSteerer
from lineas_tl.methods.head_choice import head_norms, head_selection_fit, top_k_heads


def probe_heads(model: Any, source: list[str], target: list[str], pooling: str, seed: int, splits: int = 1) -> list[list[int]]:
    """``[layer, head]`` pairs: ITI-c's own choice (``splits=1``) or the best by mean held-out
    accuracy over ``splits`` probe splits."""
    fits = [HookedSteerer(model, pooling=pooling).fit(source, target, method="iti", seed=seed + 1000 * i, progress=False).history_
            for i in range(splits)]  # fmt: skip
    if splits == 1:
        return fits[0]["heads"]
    accuracy = np.mean([np.asarray(h["val_accuracy"]) for h in fits], axis=0)  # [n_layers, n_heads]
    return top_k_heads(accuracy, fits[0]["k"])


def lineas_heads(model: Any, source: list[str], target: list[str], pooling: str, seed: int, k: int = 13,
                 gamma: float = 1.0) -> tuple[list[list[int]], dict[str, Any]]:  # fmt: skip
    """The ``k`` heads :func:`lineas_tl.methods.head_choice.lineas_heads` returns (only heads the fit
    kept), and its selection fit's history."""
    steerer = head_selection_fit(model, source, target, gamma=gamma, pooling=pooling, seed=seed, progress=False, warn=False)
    return top_k_heads(head_norms(steerer), k, above=0.0), steerer.history_
