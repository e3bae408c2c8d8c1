r"""A shared gate: one value per prompt, read before steering, that scales every site together.

The per-site gate (:mod:`lineas_tl.gate.state`) opens each site to its own probe's value. LinEAS's
maps are fitted together, each for what its upstream maps produce, so a part of them is not a
smaller version of the whole: on held-out sentiment prompts the per-site gate left LinEAS with no
effect while it kept Mean-AcT's (``results/gate/README.md``). A shared gate decides once per prompt,
for every site at once:

.. math::

    g = \sigma\Big(\frac{1}{|A|} \sum_{l \in A} \big(\bar z_l \cdot d_l + e_l\big)\Big)

where :math:`A` are the active sites (probe accuracy at or above the threshold), :math:`\bar z_l`
the unsteered model's activation at site :math:`l` averaged over the prompt's counted tokens (what
the probes were fitted on) and :math:`d_l, e_l` the probe's folded direction and constant: the
probes vote with their logits. With ``hard=True`` the gate is 1 where the vote is at least 0 (a
probability of 1/2), else 0, so a prompt is steered fully or not at all. Every site with a map is
then steered as :math:`z + \lambda g (T(z) - z)`, active probe or not.

Reading the vote needs the activations of every active site before the first one is steered, so it
costs one unsteered forward pass over the prompt (:func:`read_shared_gate`), up to the deepest
voting site (``vote_sites`` lets only the first active sites vote, which shortens it), done by
``steerer.generate``, the perplexity evaluation and ``steerer.gates``; with a hand-made forward
pass, pass ``prompt_gate=steerer.prompt_gate(prompt)`` to ``fwd_hooks`` / ``steer`` / ``hooks``.
Generated tokens all take the prompt's gate, so the result is the same with and without the KV cache.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from lineas_tl.gate.state import features_last, probe_logit, squash


def read_shared_gate(gate: Any, maps: Mapping[str, Any], runner: Any, batch: Any) -> Float[Tensor, " batch"]:
    """The shared gate of each row of ``batch`` (a :class:`~lineas_tl.runner.Batch` of prompts, padded
    as the steered pass will pad them): the active probes' vote on the unsteered activations,
    averaged over each row's counted tokens (``batch.mask``). Only the first
    ``gate.options.vote_sites`` active sites vote (all by default), and the pass stops after the last
    of them. A row with no counted token, or a gate with no active site, gets 0."""
    sites = [s for s in maps if s in gate.active_sites][: gate.options.vote_sites]
    if not sites:
        return torch.zeros(batch.size)
    mask = batch.mask
    logits: dict[str, Tensor] = {}

    def reader(site: str) -> Any:
        m, probe = maps[site], gate.probes[site]

        def hook(act: Tensor, *, hook: Any) -> Tensor:
            x, batch, n_pos = features_last(act, m.feature_axis, len(m.feature_shape))
            a, e = probe_logit(x, probe, batch, n_pos)
            w = torch.ones_like(a) if mask is None or tuple(mask.shape) != tuple(a.shape) else mask.to(a.device).float()
            n = w.sum(1)
            logits[site] = torch.where(n > 0, (a * w).sum(1) / n.clamp_min(1) + e, torch.full_like(n, -math.inf))
            return act

        return hook

    with torch.no_grad():
        runner.forward(batch, [(s, reader(s)) for s in sites], sites=sites)
    device = logits[sites[0]].device
    vote = torch.stack([logits[s].to(device) for s in sites]).mean(0)
    return squash(vote, gate.options.hard)
