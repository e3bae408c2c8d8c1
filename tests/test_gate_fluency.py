"""The continuation perplexity: each continuation scored by the unsteered model given its prompt."""

import math

import torch

from lineas_tl.evaluate.fluency import continuation_nll, continuation_perplexity


def test_continuation_nll_matches_a_hand_computed_forward_pass(gpt2_model):
    model = gpt2_model
    prompts, texts = ["the cat sat", "you are a"], [" on the mat", " stupid idiot and"]
    got = continuation_nll(model, prompts, texts, batch_size=2)
    for prompt, text, value in zip(prompts, texts, got):
        head = model.to_tokens(prompt)[0]
        tail = torch.tensor(model.tokenizer(text, add_special_tokens=False)["input_ids"])
        tokens = torch.cat([head, tail])[None]
        with torch.no_grad():
            logp = torch.log_softmax(model(tokens)[0, :-1].float(), -1)
        nll = -logp[torch.arange(len(head) - 1, tokens.shape[1] - 1), tail].mean()
        assert abs(float(nll) - value) < 1e-4
    result = continuation_perplexity(model, prompts, texts, per_prompt=1)
    assert math.isclose(result.value, math.exp(sum(got) / 2), rel_tol=1e-6)
    assert result.lo <= result.value <= result.hi
    empty = continuation_nll(model, ["the cat"], [""])
    assert math.isnan(empty[0])
