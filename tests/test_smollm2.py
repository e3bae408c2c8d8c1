"""Integration on the real default model: load, fit a few steps, steer, generate."""

import pytest
import torch

from lineas_tl import HookedSteerer
from lineas_tl.concepts import get_concept

pytestmark = pytest.mark.slow


def test_fit_steer_generate_on_smollm2(smollm2):
    concept = get_concept("toxicity")
    source, target = concept.split(n_fit=8, seed=0)
    steerer = HookedSteerer(smollm2).fit(source, target, steps=3, batch_size=8, progress=False, warn=False)
    assert len(steerer.maps_) == 30 and steerer.history_["preset"] == "paper_short"  # ln2.hook_out, SGD
    assert steerer.history_["final_loss"] < steerer.history_["identity_loss"]
    tokens = smollm2.to_tokens(concept.eval_prompts[0])
    plain = smollm2(tokens)
    with steerer.steer(0.0):
        assert torch.equal(smollm2(tokens), plain)
    with steerer.steer(1.0):
        assert not torch.equal(smollm2(tokens), plain)
    kw = dict(max_new_tokens=6, return_type="tokens")
    unsteered = smollm2.generate(tokens, max_new_tokens=6, do_sample=False, verbose=False, stop_at_eos=True)
    assert torch.equal(steerer.generate(tokens[0], 0.0, **kw), unsteered)
    prompts = concept.eval_prompts[:3]
    batched = steerer.generate(prompts, 1.0, max_new_tokens=6, return_type="continuation")
    alone = [steerer.generate(p, 1.0, max_new_tokens=6, return_type="continuation") for p in prompts]
    assert batched == alone
    cached = steerer.generate(prompts, 1.0, **kw)
    assert torch.equal(cached, steerer.generate(prompts, 1.0, use_past_kv_cache=False, **kw))


def test_a_warm_start_worse_than_the_identity_is_dropped(smollm2):
    # On the style prompts incremental Mean-AcT's shifts compound downstream: its loss is ~4x the
    # untouched model's, so LinEAS starts from the identity there; on toxicity the warm start helps.
    for name, dropped in (("style", True), ("toxicity", False)):
        source, target = get_concept(name).split(n_fit=32, seed=0)
        h = HookedSteerer(smollm2, "outputs").fit(source, target, steps=1, progress=False, warn=False).history_
        assert (h["warm_start_loss"] >= h["identity_loss"]) == dropped
        assert h["init_used"] == ("identity" if dropped else "mean_act")
        start = h["identity_loss"] if dropped else h["warm_start_loss"]
        assert h["initial_loss"] == pytest.approx(start, rel=1e-4)  # step 1 reads the maps it starts from


def test_paper_sites_on_smollm2_are_its_post_attention_layernorms(smollm2):
    """The authors' ``.*post.*layernorm`` matches ``model.layers.N.post_attention_layernorm`` only;
    in TransformerLens that is ``blocks.N.ln2``: one site per block, 30 in SmolLM2-135M."""
    from lineas_tl.sites import paper_sites

    sites = paper_sites(smollm2)
    assert sites == [f"blocks.{i}.ln2.hook_out" for i in range(30)]
    assert HookedSteerer(smollm2, sites="paper").sites == sites
