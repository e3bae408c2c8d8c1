"""format="hf": a plain Hugging Face directory that stock transformers loads and runs steered."""

from __future__ import annotations

import json

import pytest
import torch
from test_fold import MIXED_SITES, PAPER_SITES, TOKENS, assert_same_weights, manual, snapshot

from lineas_tl.export.hf import RECORD_FILE, save_folded


def test_writes_a_plain_hugging_face_model(hf_model, tmp_path):
    from transformers import AutoModelForCausalLM

    steerer = manual(hf_model, MIXED_SITES[:2] + MIXED_SITES[4:])
    before = snapshot(hf_model)
    path = steerer.export(tmp_path / "steered-model", format="hf", strength=0.8)
    assert_same_weights(before, hf_model)  # the model in memory is untouched
    reloaded = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        with steerer.steer(0.8):
            hooked = hf_model(TOKENS)
        got = reloaded(TOKENS).logits
    assert (got - hooked).abs().max() <= 1e-4
    assert (path / "tokenizer.json").exists()
    record = json.loads((path / RECORD_FILE).read_text())
    assert record["format"] == "hf" and record["strength"] == 0.8 and record["fingerprint"]["weights"]
    with pytest.raises(FileExistsError):
        save_folded(steerer, path)


def test_llama_bias_switches_and_what_they_add(llama_model, tmp_path):
    """attention_bias also gives q/k/v a bias and mlp_bias gate/up: written as exact zeros."""
    from transformers import AutoModelForCausalLM

    steerer = manual(llama_model, ["blocks.0.hook_attn_out", "blocks.1.hook_mlp_out"])
    path = steerer.export(tmp_path / "m", format="hf")
    config = json.loads((path / "config.json").read_text())
    assert config["attention_bias"] is True and config["mlp_bias"] is True
    assert config["architectures"] == ["LlamaForCausalLM"]
    layer = AutoModelForCausalLM.from_pretrained(path).model.layers[0]
    for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.mlp.gate_proj,
                 layer.mlp.up_proj):
        assert proj.bias is not None and not proj.bias.any()
    assert layer.self_attn.o_proj.bias.abs().max() > 0


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_norm_output_maps_export_folded_into_the_input_projections(hf_model, tmp_path, strength):
    """The paper's ln2.hook_out (and ln1.hook_out): gate/up (c_fc), q/k/v (c_attn) carry the fold."""
    from transformers import AutoModelForCausalLM

    steerer = manual(hf_model, PAPER_SITES + ["blocks.0.ln1.hook_out"])
    before = snapshot(hf_model)
    path = steerer.export(tmp_path / "m", format="hf", strength=strength)
    assert_same_weights(before, hf_model)
    reloaded = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        with steerer.steer(strength):
            hooked = hf_model(TOKENS)
        got = reloaded(TOKENS).logits
        assert (hooked - hf_model(TOKENS)).abs().max() > 1e-2
    assert (got - hooked).abs().max() <= 1e-4
    config = json.loads((path / "config.json").read_text())
    if config["model_type"] == "llama":
        assert config["mlp_bias"] is True and config["attention_bias"] is True
        mlp, attn = reloaded.model.layers[1].mlp, reloaded.model.layers[0].self_attn
        for proj in (mlp.gate_proj, mlp.up_proj, attn.q_proj, attn.k_proj, attn.v_proj):
            assert proj.bias.abs().max() > 0
        for proj in (mlp.down_proj, attn.o_proj, reloaded.model.layers[0].mlp.down_proj):
            assert not proj.bias.any()  # the switch's other biases: exact zeros


def test_calibrated_strength(llama_model, tmp_path):
    from transformers import AutoModelForCausalLM

    steerer = manual(llama_model, ["blocks.1.hook_mlp_out"])
    steerer.calibrated_strength_ = 0.3
    path = steerer.export(tmp_path / "m", format="hf", strength="calibrated")
    assert json.loads((path / RECORD_FILE).read_text())["strength"] == 0.3
    with torch.no_grad(), steerer.steer(0.3):
        hooked = llama_model(TOKENS)
    got = AutoModelForCausalLM.from_pretrained(path).eval()(TOKENS).logits
    assert (got - hooked).abs().max() <= 1e-4


def test_unknown_format_is_an_error(llama_model, tmp_path):
    with pytest.raises(ValueError, match="unknown export format 'onnx'"):
        manual(llama_model, ["blocks.1.hook_mlp_out"]).export(tmp_path / "x", format="onnx")
