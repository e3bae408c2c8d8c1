"""format="control-vector": exactly the additive steering at block outputs, or a refusal naming gguf."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_fold import TOKENS, manual

from lineas_tl.export import ExportError
from lineas_tl.export.control_vector import control_vector_directions

gguf = pytest.importorskip("gguf")


def additive(model, sites):
    steerer = manual(model, sites)
    for m in steerer.maps_.values():
        m.weight.data.fill_(1.0)
    return steerer


def test_directions_reproduce_the_steering_at_block_outputs(llama_model, tmp_path):
    steerer = additive(llama_model, ["blocks.1.hook_mlp_out", "blocks.2.hook_resid_pre", "blocks.2.hook_mlp_out"])
    out = steerer.export(tmp_path / "cvec.gguf", format="control-vector", strength=0.6)
    reader = gguf.GGUFReader(out)
    assert reader.fields["general.architecture"].contents() == "controlvector"
    assert reader.fields["controlvector.layer_count"].contents() == 2
    dirs = {t.name: np.array(t.data) for t in reader.tensors}
    assert sorted(dirs) == ["direction.1", "direction.2"] and all(d.dtype == np.float32 for d in dirs.values())
    b = {s: m.bias.detach().numpy() for s, m in steerer.maps_.items()}
    # resid_pre of block 2 is block 1's output: its shift joins block 1's direction
    np.testing.assert_allclose(dirs["direction.1"], 0.6 * (b["blocks.1.mlp.hook_out"] + b["blocks.2.hook_in"]), rtol=1e-6)
    # llama.cpp adds direction.L to block L's output: the same as a shift at blocks.L.hook_resid_post
    hooks = [
        (f"blocks.{layer}.hook_resid_post", lambda act, hook, v=torch.from_numpy(d): act + v)
        for layer, d in control_vector_directions(steerer, 0.6).items()
    ]
    with torch.no_grad():
        with steerer.steer(0.6):
            hooked = llama_model(TOKENS)
        with llama_model.hooks(fwd_hooks=hooks):
            added = llama_model(TOKENS)
    assert (added - hooked).abs().max() <= 1e-5


def test_inverse_negates(llama_model):
    steerer = additive(llama_model, ["blocks.1.hook_mlp_out"])
    fwd, inv = control_vector_directions(steerer, 1.0), control_vector_directions(steerer, 1.0, inverse=True)
    np.testing.assert_allclose(inv[1], -fwd[1], rtol=1e-6)


@pytest.mark.parametrize(
    "sites,scale,why",
    [
        (["blocks.1.hook_mlp_out"], True, "scales"),
        (["blocks.1.hook_attn_out"], False, "not a block output"),
        (["blocks.0.hook_mlp_out"], False, "block 0"),
    ],
)
def test_refusals_point_to_gguf(llama_model, tmp_path, sites, scale, why):
    steerer = manual(llama_model, sites) if scale else additive(llama_model, sites)
    with pytest.raises(ExportError, match=rf"{why}.*format='gguf'"):
        steerer.export(tmp_path / "x.gguf", format="control-vector")
    assert list(tmp_path.iterdir()) == []


def test_position_scoped_and_support_range_maps_are_refused(llama_model, tmp_path):
    steerer = additive(llama_model, ["blocks.1.hook_mlp_out"])
    steerer.maps_["blocks.1.mlp.hook_out"].set_range(torch.full((32,), -1.0), torch.full((32,), 1.0))
    with pytest.raises(ExportError, match="support range.*format='gguf'"):
        steerer.export(tmp_path / "x.gguf", format="control-vector")


def test_calibrated_strength_is_used(llama_model, tmp_path):
    steerer = additive(llama_model, ["blocks.1.hook_mlp_out"])
    with pytest.raises(ValueError, match="calibrate"):
        control_vector_directions(steerer, "calibrated")
    steerer.calibrated_strength_ = 0.25
    np.testing.assert_allclose(control_vector_directions(steerer, "calibrated")[1], control_vector_directions(steerer, 0.25)[1])
