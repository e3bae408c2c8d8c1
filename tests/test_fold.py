"""Folding maps into the weights: same outputs as the hooked model, exact restore, clear refusals."""

from __future__ import annotations

import pytest
import torch

from lineas_tl import AffineMap, HookedSteerer
from lineas_tl import fold as lfold
from lineas_tl.collect import pooled_forward
from lineas_tl.fold import FoldError, fold_plan, folded, unfoldable_sites
from lineas_tl.sites import paper_sites

TOKENS = torch.tensor([[5, 17, 3, 42, 8, 99, 23, 64], [1, 2, 3, 4, 5, 6, 7, 8]])
# Every kind of foldable site: module outputs (default sites), the projection's own output, and the
# inputs of the output projections (hook_z, the MLP's post-activation).
MIXED_SITES = [
    "blocks.0.attn.hook_z",
    "blocks.0.hook_attn_out",
    "blocks.0.attn.o.hook_out",
    "blocks.1.mlp.hook_post",
    "blocks.1.hook_mlp_out",
    "blocks.2.mlp.out.hook_out",
]


def randomize(steerer: HookedSteerer, seed: int = 0, scale: float = 0.3) -> HookedSteerer:
    """Push the maps far from the identity so that a wrong fold would show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in steerer.maps_.values():
            m.weight.copy_(1 + scale * torch.randn(m.feature_shape, generator=g))
            m.bias.copy_(scale * torch.randn(m.feature_shape, generator=g))
    return steerer


def manual(model, sites=None, seed: int = 0, scale: float = 0.3) -> HookedSteerer:
    """A steerer with random maps at ``sites``, shaped by one probe forward pass (no fitting)."""
    steerer = HookedSteerer(model, sites)
    batch = steerer.runner.prepare([[1, 2, 3]]).batch([0])
    with torch.no_grad():
        _, shapes = pooled_forward(steerer.runner, batch, steerer.sites)
    steerer.maps_ = {s: AffineMap(shapes[s][1], shapes[s][0]) for s in steerer.sites}
    steerer.method_ = "manual"
    return randomize(steerer, seed, scale)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(before: dict[str, torch.Tensor], model) -> None:
    after = model.state_dict()
    assert set(after) == set(before), "the fold left parameters behind (or removed some)"
    for k, v in before.items():
        assert torch.equal(after[k], v), f"{k} not restored exactly"


@pytest.mark.parametrize("strength,inverse", [(1.0, False), (0.7, True)])
def test_folded_matches_hooked_and_restores_exactly(hf_model, strength, inverse):
    steerer = manual(hf_model)
    before = snapshot(hf_model)
    with torch.no_grad():
        unsteered = hf_model(TOKENS)
        with steerer.steer(strength, inverse=inverse):
            hooked = hf_model(TOKENS)
        with steerer.fold(strength, inverse=inverse) as handle:
            assert not any(hp.fwd_hooks for hp in hf_model.hook_dict.values())  # no hook at all
            folded_out = hf_model(TOKENS)
    assert (hooked - unsteered).abs().max() > 1e-2  # the steering does something
    assert (folded_out - hooked).abs().max() <= 1e-5
    assert sorted(handle.sites) == sorted(steerer.maps_)
    assert_same_weights(before, hf_model)
    with torch.no_grad():
        assert torch.equal(hf_model(TOKENS), unsteered)


def test_inputs_and_outputs_of_projections_fold(hf_model):
    steerer = manual(hf_model, MIXED_SITES)
    plan = fold_plan(hf_model, steerer.sites)
    sides = {site: plan[hf_model.hook_dict[site].name].split()[0] for site in MIXED_SITES}
    assert [sides[s] for s in MIXED_SITES] == ["input", "output", "output", "input", "output", "output"]
    before = snapshot(hf_model)
    with torch.no_grad():
        with steerer.steer(0.9):
            hooked = hf_model(TOKENS)
        with folded(steerer, 0.9):
            got = hf_model(TOKENS)
    assert (got - hooked).abs().max() <= 1e-5
    assert_same_weights(before, hf_model)


PAPER_SITES = [f"blocks.{i}.ln2.hook_out" for i in range(3)]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "native"])
@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_norm_outputs_fold_into_the_mlp_input_projections(request, arch, strength):
    """The paper's sites in a pre-LN model: each map folds into the input of every MLP projection
    that reads the norm's output (gate_proj and up_proj; GPT-2's c_fc), biases created and removed."""
    model = request.getfixturevalue(f"{arch}_model")
    steerer = manual(model, PAPER_SITES)
    expected = {"llama": "input of gate_proj and up_proj (Linear)", "gpt2": "input of c_fc (Conv1D)",
                "native": "input of fc_in (Linear)"}[arch]
    assert fold_plan(model, paper_sites(model)) == {s: expected for s in PAPER_SITES}
    before = snapshot(model)
    with torch.no_grad():
        unsteered = model(TOKENS)
        with steerer.steer(strength):
            hooked = model(TOKENS)
        with steerer.fold(strength) as handle:
            got = model(TOKENS)
            if arch == "llama":
                mlp = model.original_model.model.layers[1].mlp
                assert mlp.gate_proj.bias.abs().max() > 0 and mlp.up_proj.bias.abs().max() > 0
                assert mlp.down_proj.bias is None  # an input-side fold writes only the readers' biases
    assert (hooked - unsteered).abs().max() > 1e-2
    assert (got - hooked).abs().max() <= 1e-5
    assert handle.sites == PAPER_SITES
    assert_same_weights(before, model)  # bit for bit, and the created gate/up biases are gone
    with torch.no_grad():
        assert torch.equal(model(TOKENS), unsteered)


def test_sublayer_inputs_compose_with_the_projections_own_sites(hf_model):
    """ln1.hook_out (q, k, v; GPT-2: the fused c_attn) and ln2.hook_out together with the same tensor's
    other hook points (mlp.hook_in, the projection's own hook_in) and an output site: folded in the
    order the hooks run."""
    arch = type(hf_model.original_model).__name__
    sites = ["blocks.0.ln1.hook_out", "blocks.0.attn.hook_in", "blocks.1.ln2.hook_out", "blocks.1.mlp.hook_in",
             "blocks.1.mlp.in.hook_in", "blocks.1.hook_mlp_out"]
    sites += ["blocks.1.mlp.gate.hook_in"] if "Llama" in arch else ["blocks.0.attn.q.hook_in"]
    steerer = manual(hf_model, sites, seed=5)
    plan = fold_plan(hf_model, ["blocks.0.ln1.hook_out"])["blocks.0.ln1.hook_out"]
    assert plan == ("input of q_proj, k_proj and v_proj (Linear)" if "Llama" in arch else "input of c_attn (Conv1D)")
    before = snapshot(hf_model)
    for strength, inverse in [(0.9, False), (0.6, True)]:
        with torch.no_grad():
            with steerer.steer(strength, inverse=inverse):
                hooked = hf_model(TOKENS)
            with folded(steerer, strength, inverse=inverse):
                got = hf_model(TOKENS)
        assert (got - hooked).abs().max() <= 1e-5
        assert_same_weights(before, hf_model)


def test_post_norms_stay_unfoldable_with_their_reason(gemma_model):
    """Gemma-2's post norms (the paper's sites there) write to the residual stream; its pre-MLP norm folds."""
    reasons = unfoldable_sites(gemma_model, paper_sites(gemma_model))
    assert len(reasons) == 6 and all("post-sublayer norm" in why for why in reasons.values())
    steerer = manual(gemma_model, ["blocks.1.ln2_post.hook_out", "blocks.1.ln2.hook_out"])
    before = snapshot(gemma_model)
    with pytest.raises(FoldError, match=r"blocks\.1\.ln2_post\.hook_out \(the output of a post-sublayer norm"):
        steerer.fold()
    assert_same_weights(before, gemma_model)
    with torch.no_grad():
        with steerer.steer({"blocks.1.ln2.hook_out": 1.0}):
            hooked = gemma_model(TOKENS)
        with steerer.fold({"blocks.1.ln2.hook_out": 1.0}):
            got = gemma_model(TOKENS)
    assert (got - hooked).abs().max() <= 1e-5
    assert_same_weights(before, gemma_model)


def test_folded_generation_matches_hooked_generation(hf_model):
    steerer = manual(hf_model)
    kw = dict(max_new_tokens=5, return_type="tokens", stop_at_eos=False)
    hooked = steerer.generate(["you are a", "have a lovely"], strength=1.0, **kw)
    with steerer.fold(1.0):
        plain = steerer.runner.generate(["you are a", "have a lovely"], lambda tracker: [], **kw)
    unsteered = steerer.generate(["you are a", "have a lovely"], strength=0.0, **kw)
    assert torch.equal(hooked, plain)
    assert not torch.equal(hooked, unsteered)


def test_per_site_strength_folds_only_those_sites(native_model):
    steerer = manual(native_model, "outputs", seed=3)
    strengths = {"blocks.1.hook_attn_out": 1.0, "blocks.2.hook_mlp_out": 0.4}
    with torch.no_grad():
        with steerer.steer(strengths):
            hooked = native_model(TOKENS)
        with steerer.fold(strengths) as handle:
            got = native_model(TOKENS)
    assert handle.sites == ["blocks.1.attn.hook_out", "blocks.2.mlp.hook_out"]
    assert (got - hooked).abs().max() <= 1e-5


def test_missing_bias_is_created_then_removed(llama_model):
    steerer = manual(llama_model, "outputs")
    o_proj = llama_model.blocks[0].attn.o.original_component
    assert o_proj.bias is None  # Llama projections have no bias
    with steerer.fold():
        assert isinstance(o_proj.bias, torch.nn.Parameter)
        torch.testing.assert_close(o_proj.bias, steerer.maps_["blocks.0.attn.hook_out"].bias)
    assert o_proj.bias is None


def test_scale_only_maps_need_no_new_bias(llama_model):
    steerer = manual(llama_model, "outputs")
    with torch.no_grad():
        for m in steerer.maps_.values():
            m.bias.zero_()
    down_proj = llama_model.blocks[1].mlp.out.original_component
    with steerer.fold():
        assert down_proj.bias is None


def test_sites_that_cannot_fold_are_listed_and_nothing_changes(gpt2_model):
    sites = ["blocks.0.hook_attn_out", "blocks.0.hook_resid_pre", "blocks.2.ln2.hook_normalized"]
    steerer = manual(gpt2_model, sites)
    assert set(unfoldable_sites(gpt2_model, steerer.sites)) == {"blocks.0.hook_in", "blocks.2.ln2.hook_normalized"}
    before = snapshot(gpt2_model)
    with pytest.raises(FoldError, match=r"2 site\(s\): .*blocks\.0\.hook_in.*blocks\.2\.ln2\.hook_normalized"):
        steerer.fold()
    assert_same_weights(before, gpt2_model)
    # With the unfoldable sites at strength 0, the rest folds.
    with steerer.fold({"blocks.0.hook_attn_out": 1.0}) as handle:
        assert handle.sites == ["blocks.0.attn.hook_out"]


def test_shifts_on_the_residual_stream_fold_into_the_previous_mlp(hf_model):
    """ActAdd-style shifts (omega = 1) between blocks fold; scalings there do not."""
    sites = ["blocks.1.hook_resid_pre", "blocks.1.hook_mlp_out", "blocks.1.hook_resid_post"]
    steerer = manual(hf_model, sites)
    for m in steerer.maps_.values():
        if m is not steerer.maps_["blocks.1.mlp.hook_out"]:
            m.weight.data.fill_(1.0)  # a pure shift
    assert "shift on the residual stream" in fold_plan(hf_model, ["blocks.1.hook_in"])["blocks.1.hook_in"]
    before = snapshot(hf_model)
    with torch.no_grad():
        with steerer.steer(1.5):
            hooked = hf_model(TOKENS)
        with steerer.fold(1.5):
            got = hf_model(TOKENS)
    assert (got - hooked).abs().max() <= 1e-5
    assert_same_weights(before, hf_model)
    steerer.maps_["blocks.1.hook_out"].weight.data[0] = 1.1
    with pytest.raises(FoldError, match="scale the residual stream"):
        steerer.fold()
    assert_same_weights(before, hf_model)


def test_the_check_catches_an_inexact_fold_and_undoes_it(native_model, monkeypatch):
    steerer = manual(native_model)
    real = lfold.effective_affine

    def wrong(m, strength=1.0, inverse=False):
        omega, b = real(m, strength, inverse)
        return omega, b + torch.linspace(0, 1, b.numel(), dtype=b.dtype)  # a bug in the fold

    monkeypatch.setattr(lfold, "effective_affine", wrong)
    before = snapshot(native_model)
    with pytest.raises(FoldError, match="did not reproduce the hooked model"):
        steerer.fold()
    assert_same_weights(before, native_model)


def test_folds_undo_in_reverse_order(native_model):
    a, b = manual(native_model, "outputs", seed=1), manual(native_model, "outputs", seed=2)
    before = snapshot(native_model)
    with torch.no_grad():
        with a.steer(1.0), b.steer(0.5):
            hooked = native_model(TOKENS)
    ha = a.fold(1.0)
    hb = b.fold(0.5)  # folding a then b composes like entering a then b (output sites)
    with torch.no_grad():
        assert (native_model(TOKENS) - hooked).abs().max() <= 1e-5
    with pytest.raises(RuntimeError, match="reverse order"):
        ha.undo()
    hb.undo()
    ha.undo()
    ha.undo()  # idempotent
    assert_same_weights(before, native_model)


def test_unfitted_steerer_cannot_fold(native_model):
    with pytest.raises(RuntimeError, match="not fitted"):
        HookedSteerer(native_model).fold()


def test_maps_restricted_to_some_tokens_are_refused(llama_model):
    steerer = manual(llama_model, ["blocks.1.hook_mlp_out"])
    before = snapshot(llama_model)
    steerer.maps_["blocks.1.mlp.hook_out"].set_range(torch.full((32,), -1.0), torch.full((32,), 1.0))
    with pytest.raises(FoldError, match="support range"):
        steerer.fold()
    assert_same_weights(before, llama_model)
    front = AffineMap((32,), 2, kind="front", n_front=2)
    assert "first positions" in lfold.map_refusal(front)
    assert lfold.map_refusal(steerer.maps_["blocks.1.mlp.hook_out"].set_range(None, None) or AffineMap((4,))) is None


def test_fold_needs_only_the_public_steerer_api():
    """No import circle: fold.py does not import the steerer, and uses its public methods only."""
    import inspect

    source = inspect.getsource(lfold)
    assert "import lineas_tl.steerer" not in source and "from lineas_tl.steerer" not in source
    assert "steerer._" not in source


@pytest.mark.filterwarnings("ignore:LinEAS stopped")  # 2 steps: enough to move the maps
@pytest.mark.parametrize("method", ["lineas", "linear_act", "mean_act", "caa", "iti"])
def test_every_method_folds(gpt2_model, text_sets, method):
    """Each method's maps sit where a fold is exact: norm outputs (the default sites), hook_z, the
    residual stream."""
    hparams = {"steps": 2, "lr": 0.1} if method == "lineas" else {}
    if method == "linear_act":
        hparams = {"support": None}  # with its default support range it cannot fold (next test)
    steerer = HookedSteerer(gpt2_model).fit(
        text_sets["source"][:4], text_sets["target"][:4], method=method, progress=False, **hparams
    )
    tokens = gpt2_model.to_tokens(["you are a stupid idiot", "have a lovely day"], padding_side="right")
    with torch.no_grad():
        with steerer.steer(1.0):
            hooked = gpt2_model(tokens)
        with steerer.fold(1.0):
            got = gpt2_model(tokens)
        base = gpt2_model(tokens)
    assert (hooked - base).abs().max() > 0  # the method moved something
    assert (got - hooked).abs().max() <= 1e-5


@pytest.mark.parametrize("method", ["linear_act", "actadd"])
def test_methods_that_steer_some_tokens_only_are_refused(gpt2_model, text_sets, method):
    """Linear-AcT's support range and ActAdd's front positions are not a function of the weights."""
    steerer = HookedSteerer(gpt2_model).fit(
        text_sets["source"][:4], text_sets["target"][:4], method=method, progress=False
    )
    before = snapshot(gpt2_model)
    with pytest.raises(FoldError, match="support range|first positions"):
        steerer.fold(1.0)
    assert_same_weights(before, gpt2_model)
