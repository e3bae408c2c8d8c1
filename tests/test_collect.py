import pytest
import torch

from lineas_tl import collect_activations
from lineas_tl.maps import AffineMap


def test_batched_mixed_lengths_equal_one_by_one(hf_model, text_sets):
    prompts = text_sets["source"][:6]
    sites = ["blocks.0.hook_attn_out", "blocks.2.hook_mlp_out"]
    for pooling in ("mean", "last"):
        batched = collect_activations(hf_model, prompts, sites, pooling, batch_size=4, progress=False)
        for i, p in enumerate(prompts):
            alone = collect_activations(hf_model, [p], sites, pooling, progress=False)
            for s in batched:
                torch.testing.assert_close(batched[s][i], alone[s][0], atol=1e-5, rtol=1e-5)


def test_shapes_and_token_pooling(native_model):
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    acts = collect_activations(native_model, prompts, "blocks.1.hook_mlp_out", progress=False)
    assert acts["blocks.1.mlp.hook_out"].shape == (3, 32)
    per_token = collect_activations(native_model, prompts, "blocks.1.hook_mlp_out", "all", progress=False)
    assert per_token["blocks.1.mlp.hook_out"].shape == (9, 32)
    heads = collect_activations(native_model, prompts, "blocks.0.attn.hook_z", progress=False)
    assert heads["blocks.0.attn.o.hook_in"].shape == (3, 4, 8)


def test_padded_tensor_with_mask_equals_lists(native_model):
    tokens = torch.tensor([[1, 2, 3, 0], [4, 5, 6, 7]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    a = collect_activations(native_model, tokens, "blocks.0.hook_mlp_out", attention_mask=mask, progress=False)
    b = collect_activations(native_model, [[1, 2, 3], [4, 5, 6, 7]], "blocks.0.hook_mlp_out", progress=False)
    torch.testing.assert_close(a["blocks.0.mlp.hook_out"], b["blocks.0.mlp.hook_out"])


def test_stops_after_deepest_site(native_model):
    # Nothing after the deepest site runs: by stop_at_layer before a later block, and by stopping at
    # the site itself when it is in the last block (no final norm, no logits).
    reached = []
    watched = [native_model.hook_dict[name] for name in ("blocks.2.hook_in", "blocks.2.hook_out", "ln_final.hook_in")]
    for hp in watched:
        hp.add_hook(lambda act, hook: reached.append(hook.name))
    try:
        collect_activations(native_model, [[1, 2, 3]], "blocks.0.hook_mlp_out", progress=False)
        assert reached == []
        out = collect_activations(native_model, [[1, 2, 3]], "blocks.2.hook_mlp_out", progress=False)
        assert reached == ["blocks.2.hook_in"] and out["blocks.2.mlp.hook_out"].shape[0] == 1
    finally:
        for hp in watched:
            hp.remove_hooks()


def test_maps_steer_collection(native_model):
    site = "blocks.0.mlp.hook_out"
    shift = AffineMap((32,))
    with torch.no_grad():
        shift.bias.fill_(1.0)
    plain = collect_activations(native_model, [[1, 2, 3]], site, progress=False)[site]
    steered = collect_activations(native_model, [[1, 2, 3]], site, maps={site: shift}, progress=False)[site]
    torch.testing.assert_close(steered, plain + 1.0)


def test_disk_cache_reuses_results(native_model, tmp_path):
    a = collect_activations(native_model, [[1, 2, 3]], "blocks.0.hook_mlp_out", cache_dir=tmp_path, progress=False)
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) == 1 and not list(tmp_path.glob("*.tmp"))
    b = collect_activations(native_model, [[1, 2, 3]], "blocks.0.hook_mlp_out", cache_dir=tmp_path, progress=False)
    assert torch.equal(a["blocks.0.mlp.hook_out"], b["blocks.0.mlp.hook_out"])


def test_clear_errors(native_model, gpt2_model):
    with pytest.raises(ValueError, match="empty"):
        collect_activations(gpt2_model, [], progress=False)
    with pytest.raises(ValueError, match="no tokenizer"):
        collect_activations(native_model, ["hello"], progress=False)
    with pytest.raises(ValueError, match="not a hook point"):
        collect_activations(gpt2_model, ["hi"], "blocks.0.hook_mlp_outt", progress=False)
    with pytest.raises(TypeError, match="single string"):
        collect_activations(gpt2_model, "hello", progress=False)


def test_nan_in_activations_is_named(native_model):
    hp = native_model.hook_dict["blocks.0.hook_mlp_out"]
    hp.add_hook(lambda act, hook: act * float("nan"))
    try:
        with pytest.raises(FloatingPointError, match=r"blocks\.1\.attn\.hook_out"):
            collect_activations(native_model, [[1, 2, 3]], "blocks.1.hook_attn_out", progress=False)
    finally:
        hp.remove_hooks()


def test_leading_bos_is_left_out_of_pooling(gpt2_model):
    site = "blocks.1.hook_mlp_out"
    tokens = gpt2_model.to_tokens("you are a stupid idiot")
    assert tokens[0, 0] == gpt2_model.tokenizer.bos_token_id
    _, cache = gpt2_model.run_with_cache(tokens)
    acts = cache[site][0]
    pooled = collect_activations(gpt2_model, ["you are a stupid idiot"], site, progress=False)
    torch.testing.assert_close(pooled["blocks.1.mlp.hook_out"][0], acts[1:].mean(0), atol=1e-5, rtol=1e-5)
    with_bos = collect_activations(gpt2_model, ["you are a stupid idiot"], site, pool_bos=True, progress=False)
    torch.testing.assert_close(with_bos["blocks.1.mlp.hook_out"][0], acts.mean(0), atol=1e-5, rtol=1e-5)
