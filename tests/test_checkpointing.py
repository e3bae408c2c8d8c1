"""Activation checkpointing: same fit, blocks restored, clear errors."""

import pytest
import torch

from lineas_tl import HookedSteerer
from lineas_tl.checkpointing import activation_checkpointing

pytestmark = pytest.mark.filterwarnings("ignore:LinEAS stopped")


def fit(model, text_sets):
    sites = ["blocks.0.hook_attn_out", "blocks.1.hook_mlp_out", "blocks.2.hook_mlp_out"]
    steerer = HookedSteerer(model, sites)
    return steerer.fit(text_sets["source"][:12], text_sets["target"][:12], steps=8, lr=0.05, progress=False)


def test_fit_under_checkpointing_gives_the_same_maps(hf_model, text_sets, one_thread):
    plain = fit(hf_model, text_sets)
    with activation_checkpointing(hf_model):
        ckpt = fit(hf_model, text_sets)
    assert not all(m.is_identity() for m in plain.maps_.values())
    for site, m in plain.maps_.items():
        torch.testing.assert_close(ckpt.maps_[site].weight, m.weight, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ckpt.maps_[site].bias, m.bias, atol=1e-5, rtol=1e-4)
    assert ckpt.history_["loss"] == pytest.approx(plain.history_["loss"], rel=1e-4)


def test_blocks_are_checkpointed_inside_and_restored_on_exit_even_on_error(gpt2_model):
    blocks = list(gpt2_model.blocks)
    with pytest.raises(RuntimeError, match="boom"):
        with activation_checkpointing(gpt2_model):
            assert all("forward" in b.__dict__ for b in blocks)
            raise RuntimeError("boom")
    assert all("forward" not in b.__dict__ for b in blocks)
    tokens = gpt2_model.to_tokens("the cat sat")
    with activation_checkpointing(gpt2_model, enabled=False):
        assert all("forward" not in b.__dict__ for b in blocks)
    with torch.no_grad(), activation_checkpointing(gpt2_model):
        torch.testing.assert_close(gpt2_model(tokens), gpt2_model.forward(tokens))


def test_model_without_blocks_is_a_clear_error():
    with pytest.raises(TypeError, match="no `blocks`"):
        with activation_checkpointing(torch.nn.Linear(2, 2)):
            pass
