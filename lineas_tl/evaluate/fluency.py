r"""Are the steered outputs still language? Perplexity of each continuation under the unsteered model.

Reference-text perplexity measures the steered model on neutral text; it cannot see damage done to
the steered prompts' own continuations. This measure scores every continuation :math:`c` of a prompt
:math:`x` with the **unsteered** model, given the prompt:

.. math::

    \text{NLL}(c \mid x) = -\frac{1}{|c|} \sum_{t} \log p_0(c_t \mid x, c_{<t}), \qquad
    \text{PPL}_{\text{cont}} = \exp\Big(\frac{1}{P}\sum_{\text{prompts}} \overline{\text{NLL}}\Big)

(the mean NLL of a prompt's samples, averaged over prompts, exponentiated), with a 95% percentile
bootstrap interval over prompts (the samples of a prompt are not independent). Continuations are
the decoded texts, re-tokenised after the prompt's tokens; empty ones are skipped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lineas_tl.evaluate.bootstrap import bootstrap_ci
from lineas_tl.evaluate.perplexity import evaluating
from lineas_tl.runner import get_runner


@dataclass(frozen=True)
class ContinuationPerplexity:
    """``value`` with its bootstrap interval ``(lo, hi)``; ``nll`` per continuation (NaN: empty)."""

    value: float
    lo: float
    hi: float
    nll: tuple[float, ...]


def continuation_nll(model: Any, prompts: Sequence[str], texts: Sequence[str], batch_size: int = 16) -> list[float]:
    """Mean NLL per token of each ``texts[i]`` given ``prompts[i]`` under ``model`` (no steering)."""
    if len(prompts) != len(texts):
        raise ValueError(f"{len(prompts)} prompts for {len(texts)} continuations")
    runner = get_runner(model)
    tok = runner.tokenizer
    seqs, starts = [], []
    for prompt, text in zip(prompts, texts):
        head = runner.prepare([prompt]).sequences[0]
        tail = torch.as_tensor(tok(text, add_special_tokens=False)["input_ids"], dtype=torch.long) if text else torch.zeros(0, dtype=torch.long)
        seqs.append(torch.cat([head, tail]).tolist())
        starts.append(len(head))
    out: list[float] = []
    prepared = runner.prepare(seqs)
    with evaluating(model):
        for b in range(0, len(seqs), batch_size):
            idx = list(range(b, min(b + batch_size, len(seqs))))
            batch = prepared.batch(idx, padding_side="right")
            logits = runner.forward(batch, [])
            tokens = batch.kwargs["input"]
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            nll = -logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)
            for row, i in enumerate(idx):
                lo, hi = starts[i] - 1, len(seqs[i]) - 1  # predictions of the continuation's tokens
                out.append(float(nll[row, lo:hi].mean()) if hi > lo else math.nan)
    return out


def continuation_perplexity(
    model: Any, prompts: Sequence[str], texts: Sequence[str], per_prompt: int = 1, *, batch_size: int = 16, seed: int = 0
) -> ContinuationPerplexity:
    """:data:`PPL_cont` of ``texts`` (prompt-major: ``per_prompt`` samples of each prompt in turn)."""
    expanded = [p for p in prompts for _ in range(per_prompt)]
    nll = continuation_nll(model, expanded, texts, batch_size)
    by_prompt = np.asarray(nll, dtype=np.float64).reshape(len(prompts), per_prompt)
    means = [float(np.nanmean(r)) for r in by_prompt if np.isfinite(r).any()]
    if not means:
        return ContinuationPerplexity(math.nan, math.nan, math.nan, tuple(nll))
    lo, hi = bootstrap_ci(means, seed=seed)
    return ContinuationPerplexity(math.exp(float(np.mean(means))), math.exp(lo), math.exp(hi), tuple(nll))
