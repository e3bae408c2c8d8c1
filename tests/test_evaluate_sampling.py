"""Continuations under the paper's sampling protocol: layout, seeds, greedy, checks."""

from __future__ import annotations

import pytest
import torch

from lineas_tl import HookedSteerer
from lineas_tl.evaluate import PAPER, GenerationConfig, concept_score, continuations


def test_paper_protocol_is_the_default() -> None:
    assert PAPER.generate_kwargs() == {
        "max_new_tokens": 32, "do_sample": True, "temperature": 1.0, "top_p": 0.3, "repetition_penalty": 1.2,
    }  # fmt: skip
    greedy = GenerationConfig.greedy(max_new_tokens=8)
    assert greedy.generate_kwargs() == {"max_new_tokens": 8, "do_sample": False}
    assert "greedy" in greedy.describe() and "top_p=0.3" in PAPER.describe()
    with pytest.raises(ValueError, match="n_samples=1"):
        GenerationConfig(do_sample=False, n_samples=2)
    with pytest.raises(ValueError, match="top_p"):
        GenerationConfig(top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        PAPER.with_(temperature=0.0)


def test_samples_are_prompt_major_seeded_and_leave_the_global_rng_alone(gpt2_model) -> None:
    prompts = ["the cat sat", "you are a stupid", "have a lovely"]
    config = PAPER.with_(max_new_tokens=6, n_samples=2, top_p=1.0)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    texts = continuations(gpt2_model, prompts, config=config, batch_size=4, seed=5)
    assert torch.rand(1) == before  # the caller's random state is untouched
    assert len(texts) == 6 and all(isinstance(t, str) for t in texts)
    assert continuations(gpt2_model, prompts, config=config, batch_size=4, seed=5) == texts
    assert continuations(gpt2_model, prompts, config=config, batch_size=4, seed=6) != texts
    # rows are prompt-major and batch k is seeded with seed + k: the first two prompts fill the
    # first batch of 4 rows, and give its texts whatever follows
    assert continuations(gpt2_model, prompts[:2], config=config, batch_size=4, seed=5) == texts[:4]


def test_greedy_continuations_match_the_steerer(gpt2_model, text_sets) -> None:
    steerer = HookedSteerer(gpt2_model).fit(text_sets["source"][:8], text_sets["target"][:8], method="mean_act",
                                             progress=False)  # fmt: skip
    config = GenerationConfig.greedy(max_new_tokens=5)
    prompts = ["the dog ran", "you are a"]
    got = continuations(gpt2_model, prompts, steerer, 1.0, config=config)
    want = steerer.generate(prompts, 1.0, max_new_tokens=5, do_sample=False, return_type="continuation")
    assert got == want
    assert continuations(gpt2_model, prompts, steerer, 0.0, config=config) == continuations(
        gpt2_model, prompts, config=config
    )


def test_continuations_check_their_inputs(native_model, gpt2_model) -> None:
    with pytest.raises(ValueError, match="tokenizer"):
        continuations(native_model, ["hello"])
    with pytest.raises(ValueError, match="no prompts"):
        continuations(gpt2_model, [])
    assert torch.is_grad_enabled()


def test_concept_score_mean_percent_and_intervals() -> None:
    s = concept_score(["a", "b", "c", "d"], lambda texts: [0.1, 0.6, 0.9, 0.5])
    assert s.mean == pytest.approx(0.525) and s.percent == 50.0 and s.n == 4 and s.n_prompts == 4
    assert s.mean_ci[0] <= s.mean <= s.mean_ci[1]
    # two prompts with two samples each: prompt means 0.35 and 0.7; percent above 0.5: 50 and 50
    two = concept_score(["a", "b", "c", "d"], lambda texts: [0.1, 0.6, 0.9, 0.5], per_prompt=2, n_resamples=20_000)
    assert two.n_prompts == 2 and two.percent_ci == (50.0, 50.0)
    assert two.mean_ci == pytest.approx((0.35, 0.7))
    with pytest.raises(ValueError, match="returned 1 scores"):
        concept_score(["a", "b"], lambda texts: [0.5])
    with pytest.raises(ValueError, match="NaN"):
        concept_score(["a"], lambda texts: [float("nan")])
    with pytest.raises(ValueError, match="no texts"):
        concept_score([], lambda texts: [])
