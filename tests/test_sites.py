import pytest

from lineas_tl.sites import block_index, default_sites, paper_sites, preset_sites, resolve_sites, stop_layer


def test_default_sites_are_the_papers_and_outputs_keep_their_order(native_model):
    assert default_sites(native_model) == paper_sites(native_model)  # ln2.hook_out in a pre-LN model
    sites = preset_sites(native_model, "outputs")
    assert len(sites) == 2 * native_model.cfg.n_layers
    assert sites[:2] == ["blocks.0.attn.hook_out", "blocks.0.mlp.hook_out"]
    assert [block_index(s) for s in sites] == sorted(block_index(s) for s in sites)


def test_aliases_resolve_to_canonical_names(hf_model):
    assert resolve_sites(hf_model, "blocks.1.hook_attn_out") == ["blocks.1.attn.hook_out"]
    assert resolve_sites(hf_model, ["blocks.0.attn.hook_z"]) == ["blocks.0.attn.o.hook_in"]
    # alias and canonical name of the same hook point count once
    assert resolve_sites(hf_model, ["blocks.1.hook_mlp_out", "blocks.1.mlp.hook_out"]) == ["blocks.1.mlp.hook_out"]


def test_regex_and_callable(native_model):
    by_regex = resolve_sites(native_model, r"blocks\.[01]\.hook_mlp_out")
    assert by_regex == ["blocks.0.mlp.hook_out", "blocks.1.mlp.hook_out"]
    by_fn = resolve_sites(native_model, lambda n: n.endswith("hook_attn_out"))
    assert by_fn == [f"blocks.{i}.attn.hook_out" for i in range(3)]


def test_unknown_site_lists_close_matches(native_model):
    with pytest.raises(ValueError, match=r"blocks\.1\.hook_mlp_out"):
        resolve_sites(native_model, "blocks.1.hook_mlp_outt")
    with pytest.raises(ValueError, match="empty"):
        resolve_sites(native_model, [])
    with pytest.raises(ValueError, match="selected no hook point"):
        resolve_sites(native_model, lambda n: False)


def test_not_a_hooked_model():
    with pytest.raises(TypeError, match="hook points"):
        resolve_sites(object(), "x")


def test_stop_layer_is_after_the_deepest_site(native_model):
    assert stop_layer(native_model, ["blocks.0.attn.hook_out"]) == 1
    assert stop_layer(native_model, ["blocks.0.attn.hook_out", "blocks.2.mlp.hook_out"]) is None
    assert stop_layer(native_model, ["hook_embed"]) is None


def test_paper_sites_are_ln2_in_pre_ln_models(llama_model, gpt2_model, native_model):
    from lineas_tl import HookedSteerer
    from lineas_tl.sites import paper_sites

    for model in (llama_model, gpt2_model, native_model):
        expected = [f"blocks.{i}.ln2.hook_out" for i in range(model.cfg.n_layers)]
        assert paper_sites(model) == expected
        assert resolve_sites(model, "paper") == expected
        assert HookedSteerer(model, sites="paper").sites == expected


def test_paper_sites_are_both_post_norms_in_gemma(gemma_model):
    from lineas_tl.sites import paper_sites

    expected = [f"blocks.{i}.{n}_post.hook_out" for i in range(gemma_model.cfg.n_layers) for n in ("ln1", "ln2")]
    assert paper_sites(gemma_model) == expected == resolve_sites(gemma_model, "paper")


def test_paper_sites_need_a_norm(native_model):
    from lineas_tl.sites import paper_sites

    class Bare:
        hook_dict = {"blocks.0.hook_mlp_out": native_model.hook_dict["blocks.0.hook_mlp_out"]}

    with pytest.raises(ValueError, match="paper's sites"):
        paper_sites(Bare())
