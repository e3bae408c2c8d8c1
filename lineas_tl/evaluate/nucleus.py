"""Nucleus (top-p) sampling without sorting the vocabulary, draw for draw TransformerLens' own.

TransformerLens' ``sample_logits`` finds the top-p nucleus by sorting all of a row's logits at every
generated token: on SmolLM2 (49k tokens), a fifth of the evaluation's sampling time. The nucleus at
top_p 0.3 holds a few tokens, so :func:`top_p_removed` finds the same set from the ``k`` largest
logits (``k`` grows until the nucleus fits), and :func:`faster_top_p` hands TransformerLens'
sampler the logits already masked, so the random draw itself (a ``Categorical`` over the whole
vocabulary) is TransformerLens' own and consumes the same random numbers.

The nucleus's probabilities are computed against a sum taken in vocabulary order rather than in
sorted order, so they can differ from TransformerLens' in the last bit: a token whose cumulative
probability lies within about 1e-7 of ``top_p`` could fall on the other side. It did not happen in
the three result runs (toxicity, sentiment, style): their tables came out identical
(``benchmarks/RESULTS_sampling.md``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from jaxtyping import Bool, Float
from torch import Tensor


def top_p_removed(
    logits: Float[Tensor, "batch vocab"], top_p: float, k: int = 64
) -> Bool[Tensor, "batch vocab"]:
    """The tokens TransformerLens' top-p filter removes (True): all but the smallest set of most
    likely tokens whose probability reaches ``top_p`` (the token that crosses it is kept)."""
    vocab = logits.shape[-1]
    logits = logits.float()
    log_total = torch.logsumexp(logits, dim=-1, keepdim=True)
    while True:
        k = min(k, vocab)
        top, index = logits.topk(k, dim=-1)
        cumulative = (top - log_total).exp().cumsum(dim=-1)
        if k == vocab or bool((cumulative[:, -1] > top_p).all()):
            break
        k *= 4
    drop = cumulative > top_p
    drop[:, 1:] = drop[:, :-1].clone()
    drop[:, 0] = False
    return torch.ones_like(logits, dtype=torch.bool).scatter(-1, index, drop)


@contextlib.contextmanager
def faster_top_p() -> Iterator[None]:
    """Within the block, TransformerLens' ``generate`` finds the top-p nucleus with
    :func:`top_p_removed`; everything else (penalty, temperature, the draw) is its own code.

    Other settings (greedy, ``top_k``, a frequency penalty) go to TransformerLens unchanged. Not
    thread-safe: the sampler is swapped in the ``transformer_lens.utilities`` module for the block.
    """
    import transformer_lens.utilities as tl_utils
    from transformer_lens.utilities import logits_utils

    original = tl_utils.sample_logits
    penalise = getattr(logits_utils, "_apply_repetition_penalty", None)
    if penalise is None:  # another TransformerLens: keep its sampler
        yield
        return

    def sample_logits(final_logits: Tensor, top_k: int | None = None, top_p: float | None = None,
                      temperature: float = 1.0, freq_penalty: float = 0.0, repetition_penalty: float = 1.0,
                      tokens: Tensor | None = None) -> Tensor:  # fmt: skip
        if top_p is None or top_k is not None or temperature == 0.0 or freq_penalty != 0.0:
            return original(final_logits, top_k, top_p, temperature, freq_penalty, repetition_penalty, tokens)
        if repetition_penalty != 1.0 and tokens is not None:
            final_logits = penalise(final_logits, tokens, repetition_penalty)
        final_logits = final_logits / temperature
        final_logits = final_logits.masked_fill(top_p_removed(final_logits, top_p), -float("inf"))
        return original(final_logits, temperature=1.0)

    tl_utils.sample_logits = sample_logits
    try:
        yield
    finally:
        tl_utils.sample_logits = original
