"""HookedSteerer: fitting moves held-out activations, leaves the model alone, and generation is exact."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from lineas_tl import HookedSteerer, collect_activations, global_loss


def held_out_gap(model, steerer, source, target, strength=1.0):
    """Summed per-site W2² between (steered) source and target pooled activations."""
    target_acts = collect_activations(model, target, steerer.sites, progress=False)
    with steerer.steer(strength):
        source_acts = collect_activations(model, source, steerer.sites, progress=False)
    _, per_site = global_loss(
        {s: a.flatten(1) for s, a in source_acts.items()},
        {s: a.flatten(1) for s, a in target_acts.items()},
    )
    return sum(per_site.values())


@pytest.fixture(scope="module")
def fitted(gpt2_dir, text_sets_module):
    from conftest import boot

    model = boot(gpt2_dir)
    src, tgt = text_sets_module
    steerer = HookedSteerer(model).fit(src[:32], tgt[:32], progress=False)
    return model, steerer


@pytest.fixture(scope="module")
def text_sets_module():
    from conftest import SOURCE_WORDS, TARGET_WORDS, make_prompts

    return make_prompts(SOURCE_WORDS, 96, seed=1), make_prompts(TARGET_WORDS, 96, seed=2)


def test_fit_halves_held_out_mismatch(fitted, text_sets_module):
    model, steerer = fitted
    src, tgt = text_sets_module
    before = held_out_gap(model, steerer, src[32:], tgt[32:], strength=0.0)
    after = held_out_gap(model, steerer, src[32:], tgt[32:], strength=1.0)
    # measured on this fixture: the default 0.54 of the unsteered mismatch, the paper's recipe 0.52,
    # incremental Mean-AcT 0.48 (LinEAS fits the 32 fit prompts more closely than it generalises)
    assert after <= 0.6 * before, (before, after)
    assert steerer.history_["final_loss"] < steerer.history_["identity_loss"]


def test_strength_zero_is_bit_identical(fitted):
    model, steerer = fitted
    tokens = model.to_tokens("you are a stupid idiot")
    plain = model(tokens)
    with steerer.steer(0.0):
        assert torch.equal(model(tokens), plain)
    with steerer.steer(1.0):
        assert not torch.equal(model(tokens), plain)
    assert torch.equal(model(tokens), plain)  # hooks removed on exit


def test_hooks_removed_even_on_error(fitted):
    model, steerer = fitted
    tokens = model.to_tokens("hello")
    plain = model(tokens)
    with pytest.raises(RuntimeError, match="boom"):
        with steerer.steer(1.0):
            raise RuntimeError("boom")
    assert torch.equal(model(tokens), plain)


def test_model_weights_unchanged_and_still_trainable(gpt2_dir, text_sets):
    from conftest import boot

    model = boot(gpt2_dir)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    HookedSteerer(model).fit(text_sets["source"][:8], text_sets["target"][:8], steps=3, progress=False)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.requires_grad for p in model.parameters())
    assert model.training  # mode restored


def test_fit_is_deterministic_for_a_seed(native_model):
    src = [[1, i, i + 1, 3] for i in range(10, 26)]
    tgt = [[2, i, i + 2] for i in range(40, 56)]
    a = HookedSteerer(native_model).fit(src, tgt, steps=5, seed=3, batch_size=8, progress=False)
    b = HookedSteerer(native_model).fit(src, tgt, steps=5, seed=3, batch_size=8, progress=False)
    assert a.history_["loss"] == b.history_["loss"]
    for s in a.maps_:
        assert torch.equal(a.maps_[s].weight, b.maps_[s].weight)


def test_history_and_support(fitted):
    _, steerer = fitted
    assert len(steerer.history_["loss"]) == steerer.history_["steps"] <= 300
    assert set(steerer.support()) == set(steerer.sites)
    assert all(0 <= v <= 1 for v in steerer.support().values())


def test_generation_same_with_and_without_kv_cache_and_padding(fitted):
    model, steerer = fitted
    prompts = ["the cat", "you are a stupid idiot and", "have a"]
    for positions in ("all", "prompt", "generated"):
        kw = dict(positions=positions, max_new_tokens=6, return_type="tokens")
        cached = steerer.generate(prompts, 1.0, **kw)
        uncached = steerer.generate(prompts, 1.0, use_past_kv_cache=False, **kw)
        assert torch.equal(cached, uncached), positions
        batched = steerer.generate(prompts, 1.0, positions=positions, max_new_tokens=6, return_type="continuation")
        alone = [
            steerer.generate(p, 1.0, positions=positions, max_new_tokens=6, return_type="continuation")
            for p in prompts
        ]
        assert batched == alone, positions


def test_generation_matches_hugging_face_reference(gpt2_dir):
    """Unsteered generation through our runner equals transformers' own greedy generate."""
    from conftest import boot

    model = boot(gpt2_dir)
    hf = AutoModelForCausalLM.from_pretrained(gpt2_dir).eval()
    steerer = HookedSteerer(model, sites="blocks.0.hook_mlp_out")
    steerer.maps_ = {"blocks.0.mlp.hook_out": steerer_identity(model)}
    tokens = model.to_tokens("you are a stupid idiot")
    ours = steerer.generate(tokens[0], 0.0, max_new_tokens=8, return_type="tokens", stop_at_eos=False)
    ref = hf.generate(tokens, max_new_tokens=8, do_sample=False)
    assert torch.equal(ours, ref)


def steerer_identity(model):
    from lineas_tl.maps import AffineMap

    return AffineMap((model.cfg.d_model,))


def test_positions_select_what_is_steered(fitted):
    model, steerer = fitted
    kw = dict(max_new_tokens=8, return_type="tokens", stop_at_eos=False)
    prompt = "you are a stupid idiot and"
    plain = steerer.generate(prompt, 0.0, **kw)
    outs = {p: steerer.generate(prompt, 1.0, positions=p, **kw) for p in ("all", "prompt", "generated")}
    assert not torch.equal(outs["all"], plain)
    # steering only generated tokens leaves the first new token's logits untouched
    n = model.to_tokens(prompt).shape[1]
    assert torch.equal(outs["generated"][:, n], plain[:, n])


def test_inverse_moves_the_other_way(fitted, text_sets_module):
    model, steerer = fitted
    src, tgt = text_sets_module
    site = steerer.sites[-1]
    base = collect_activations(model, tgt[32:], site, progress=False)[site].mean(0)
    with steerer.steer(1.0, inverse=True):
        induced = collect_activations(model, tgt[32:], site, progress=False)[site].mean(0)
    source_mean = collect_activations(model, src[32:], site, progress=False)[site].mean(0)
    # applying T^-1 to target prompts moves them toward the source side
    assert (induced - source_mean).norm() < (base - source_mean).norm()


def test_errors(native_model, gpt2_model, text_sets):
    src, tgt = text_sets["source"], text_sets["target"]
    steerer = HookedSteerer(gpt2_model)
    with pytest.raises(ValueError, match="empty"):
        steerer.fit([], tgt)
    with pytest.raises(ValueError, match="batch_size"):
        steerer.fit(src[:4], tgt[:4], batch_size=8, progress=False)
    with pytest.raises(ValueError, match="unknown method"):
        steerer.fit(src, tgt, method="nope")
    with pytest.raises(ValueError, match="no tokenizer"):
        HookedSteerer(native_model).fit(["a b"], ["c d"])
    with pytest.raises(RuntimeError, match="not fitted"):
        with steerer.steer():
            pass
    with pytest.raises(ValueError, match="not a hook point"):
        HookedSteerer(gpt2_model, sites=["blocks.0.hook_mlp_ot"])


def test_maps_apply_at_the_bos_in_fitting_as_in_inference(gpt2_model, text_sets):
    """Pooling leaves the BOS out of the loss, but the maps steer it in the fit's forward pass
    exactly as they do under steer() (and so in generation, perplexity and fold)."""
    src, tgt = text_sets["source"][:16], text_sets["target"][:16]
    # the fast preset's warm start moves the maps off the identity before its one (null) step
    s = HookedSteerer(gpt2_model, "outputs").fit(src, tgt, steps=1, lr=1e-30, progress=False, warn=False)
    assert gpt2_model.to_tokens(src[0])[0, 0] == gpt2_model.tokenizer.bos_token_id
    target_acts = collect_activations(gpt2_model, tgt, s.sites, progress=False)
    with s.steer(1.0):
        source_acts = collect_activations(gpt2_model, src, s.sites, progress=False)
    loss, _ = global_loss(source_acts, target_acts)
    assert float(loss) == pytest.approx(s.history_["loss"][0], rel=1e-5)
    site = s.sites[0]
    _, plain = gpt2_model.run_with_cache(src[0], names_filter=[site])
    with s.steer(1.0):
        _, steered = gpt2_model.run_with_cache(src[0], names_filter=[site])
    assert not torch.allclose(plain[site][0, 0], steered[site][0, 0])  # the BOS position is steered
