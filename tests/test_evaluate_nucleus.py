"""The unsorted top-p nucleus: TransformerLens' mask and TransformerLens' draws, token for token."""

from __future__ import annotations

import pytest
import torch
import transformer_lens.utilities as tl_utils

from lineas_tl.evaluate.nucleus import faster_top_p, top_p_removed


def tl_mask(logits: torch.Tensor, top_p: float, monkeypatch: pytest.MonkeyPatch) -> torch.Tensor:
    """TransformerLens' own top-p mask: the logits its sampler hands to ``Categorical``, at -inf."""
    seen: list[torch.Tensor] = []

    class Recording(torch.distributions.Categorical):
        def __init__(self, logits: torch.Tensor) -> None:
            seen.append(logits)
            super().__init__(logits=logits)

    with monkeypatch.context() as m:
        m.setattr(torch.distributions.categorical, "Categorical", Recording)
        tl_utils.sample_logits(logits, top_p=top_p)
    return torch.isneginf(seen[-1])


def test_mask_by_hand() -> None:
    # probabilities 0.5, 0.3, 0.15, 0.05 (in scrambled vocabulary order)
    logits = torch.tensor([[0.15, 0.5, 0.05, 0.3]]).log()
    assert top_p_removed(logits, 0.3).tolist() == [[True, False, True, True]]  # 0.5 alone reaches 0.3
    assert top_p_removed(logits, 0.6).tolist() == [[True, False, True, False]]  # 0.5 + 0.3 crosses 0.6
    assert top_p_removed(logits, 0.85).tolist() == [[False, False, True, False]]
    assert top_p_removed(logits, 1.0).tolist() == [[False, False, False, False]]


@pytest.mark.parametrize("scale", [0.5, 3.0, 12.0])
@pytest.mark.parametrize("top_p", [0.1, 0.3, 0.9])
def test_mask_equals_transformer_lens_mask(scale: float, top_p: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """Flat and peaked rows over a 5000-token vocabulary, including rows whose nucleus is larger
    than the first ``k`` guess (the search widens)."""
    logits = torch.randn(16, 5000, generator=torch.Generator().manual_seed(0)) * scale
    assert torch.equal(top_p_removed(logits, top_p, k=8), tl_mask(logits, top_p, monkeypatch))


def test_sampler_draws_what_transformer_lens_draws() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(8, 3000, generator=gen) * 4
    tokens = torch.randint(0, 3000, (8, 12), generator=gen)
    kwargs = {"top_p": 0.3, "temperature": 0.7, "repetition_penalty": 1.2, "tokens": tokens}
    original = tl_utils.sample_logits
    draws = []
    for swap in (False, True):
        torch.manual_seed(0)
        if swap:
            with faster_top_p():
                assert tl_utils.sample_logits is not original
                draws.append(torch.stack([tl_utils.sample_logits(logits, **kwargs) for _ in range(20)]))
        else:
            draws.append(torch.stack([original(logits, **kwargs) for _ in range(20)]))
    assert tl_utils.sample_logits is original  # restored on exit
    assert torch.equal(draws[0], draws[1])
    # greedy and top-k are passed through untouched
    with faster_top_p():
        assert torch.equal(tl_utils.sample_logits(logits, temperature=0.0), logits.argmax(-1))
        torch.manual_seed(3)
        top_k = tl_utils.sample_logits(logits, top_k=5)
    torch.manual_seed(3)
    assert torch.equal(top_k, original(logits, top_k=5))
