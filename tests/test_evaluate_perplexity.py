"""Perplexity of a (steered) model on reference text, on tiny offline models."""

from __future__ import annotations

import math

import pytest
import torch

from lineas_tl import HookedSteerer
from lineas_tl.evaluate import REFERENCE_TEXTS, perplexity


def test_perplexity_is_the_model_loss_and_ignores_padding(gpt2_model) -> None:
    texts = list(REFERENCE_TEXTS[:5])
    one_by_one = [perplexity(gpt2_model, [t]) for t in texts]
    for t, p in zip(texts, one_by_one, strict=True):
        with torch.no_grad():
            loss = gpt2_model(gpt2_model.to_tokens(t), return_type="loss")
        assert p == pytest.approx(math.exp(float(loss)), rel=1e-4)
    # corpus perplexity: token-weighted mean NLL, identical whatever the batching and padding
    batched = perplexity(gpt2_model, texts, batch_size=3)
    assert batched == pytest.approx(perplexity(gpt2_model, texts, batch_size=1), rel=1e-5)
    counts = [gpt2_model.to_tokens(t).shape[1] - 1 for t in texts]
    expected = math.exp(sum(c * math.log(p) for c, p in zip(counts, one_by_one, strict=True)) / sum(counts))
    assert batched == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="batch_size"):
        perplexity(gpt2_model, texts, batch_size=0)


def test_steering_changes_perplexity(llama_model, text_sets) -> None:
    source, target = text_sets["source"][:16], text_sets["target"][:16]
    steerer = HookedSteerer(llama_model).fit(source, target, method="mean_act", progress=False)
    texts = list(REFERENCE_TEXTS[:8])
    base = perplexity(llama_model, texts)
    assert math.isfinite(base) and base > 1
    assert perplexity(llama_model, texts, steerer=steerer, strength=0.0) == base
    steered = perplexity(llama_model, texts, steerer=steerer, strength=1.0)
    assert math.isfinite(steered) and steered != pytest.approx(base, rel=1e-6)
