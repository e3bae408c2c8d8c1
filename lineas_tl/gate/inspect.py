"""See the gate: which tokens of a text each site steers, and how much."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from lineas_tl.gate.gate import gate_inputs
from lineas_tl.protocols import SteererLike


@dataclass
class GateTrace:
    """Per-token, per-site gate values of one text (what ``steerer.gates(text)`` returns).

    Attributes:
        tokens: the text's tokens, as strings (BOS included when the model prepends one).
        values: ``site -> [n_tokens]`` gate values in [0, 1] (0 at sites that are off).
        accuracy: each site's held-out probe accuracy.
        active: the sites the gate steers.
    """

    tokens: list[str]
    values: dict[str, Float[Tensor, " pos"]]
    accuracy: dict[str, float]
    active: list[str]

    def matrix(self, active_only: bool = True) -> Float[Tensor, "site pos"]:
        """``[n_sites, n_tokens]``: the active sites (or all), in forward order."""
        sites = self.active if active_only else list(self.values)
        if not sites:
            return torch.zeros(0, len(self.tokens))
        return torch.stack([self.values[s] for s in sites])

    def mean(self) -> Float[Tensor, " pos"]:
        """Each token's gate averaged over the active sites (0 where none is active)."""
        m = self.matrix()
        return m.mean(0) if len(m) else torch.zeros(len(self.tokens))


def gates(steerer: SteererLike, text: Any, strength: Any = 1.0, *, inverse: bool = False) -> GateTrace:
    """Run ``text`` (one prompt) through the steered model and record every site's gate per token.

    The gates are read with the steering active at ``strength``, as in generation: a site's gate
    sees the activations its upstream sites' maps produce. For a diffusion pipeline ``text`` is a
    prompt, read at the fitting step(s) with the first prompt's seed, and each site has one value
    (the image's gate; with the ``"token"`` driver the mean over spatial positions).
    """
    gate = getattr(steerer, "gate_", None)
    if gate is None:
        raise ValueError("this steerer has no gate: fit it with fit(source, target, control=..., gate=True)")
    runner = steerer.runner
    prepared = runner.prepare([text])
    batch = prepared.batch([0])
    pairs = steerer.fwd_hooks(strength, inverse=inverse, **gate_inputs(steerer, batch))
    record: dict[str, Tensor] = {}
    pairs[0][1].state.record = record  # one GateState is shared by all of a call's hooks
    with torch.no_grad():
        runner.forward(batch, pairs, sites=list(steerer.maps_))
    if "input" not in batch.kwargs:  # a diffusion pipeline: one value per image and site
        values = {s: record[s][0].float().mean().reshape(1) if s in record else torch.zeros(1) for s in steerer.maps_}
        return GateTrace(["<image>"], values, gate.accuracy, gate.active_sites)
    ids = batch.kwargs["input"][0].tolist()
    tok = getattr(runner, "tokenizer", None)
    tokens = [tok.decode([i]) for i in ids] if tok is not None else [str(i) for i in ids]
    values = {s: record[s][0].float() if s in record else torch.zeros(len(ids)) for s in steerer.maps_}
    return GateTrace(tokens, values, gate.accuracy, gate.active_sites)
