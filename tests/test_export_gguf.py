"""format="gguf": the folded tensors equal the in-memory fold, everything else is copied as it was.

A tiny Llama is written to GGUF (F32, and a Q8_0 copy) and loaded back through
``lineas_tl.models.load``, as the embedded SmolLM2 is; the real model in llama.cpp is
``test_export_llamacpp.py``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_fold import PAPER_SITES, manual

from lineas_tl import models
from lineas_tl.export import ExportError
from lineas_tl.export.gguf_from_hf import rotary_rows, write_llama_gguf
from lineas_tl.fold import FoldError

gguf = pytest.importorskip("gguf")

SITES = ["blocks.0.attn.hook_z", "blocks.0.hook_attn_out", "blocks.1.mlp.hook_post", "blocks.1.hook_mlp_out",
         "blocks.2.hook_mlp_out"]


@pytest.fixture(scope="module")
def tiny_gguf(llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(llama_dir)
    return write_llama_gguf(hf, AutoTokenizer.from_pretrained(llama_dir), tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="module")
def tiny_q8(tiny_gguf: Path) -> Path:
    """A copy of the tiny GGUF with every 2-D weight quantised to Q8_0 (as a downloaded GGUF would be)."""
    reader = gguf.GGUFReader(tiny_gguf)
    out = tiny_gguf.with_name("tiny-q8.gguf")
    w = gguf.GGUFWriter(out, "llama")
    for f in reader.fields.values():
        if not f.name.startswith("GGUF.") and f.name != "general.architecture":
            w.add_key_value(f.name, f.contents(), f.types[0], sub_type=f.types[-1] if len(f.types) > 1 else None)
    for t in reader.tensors:
        data = np.asarray(t.data)
        if data.ndim == 2 and data.shape[1] % 32 == 0:
            w.add_tensor(t.name, gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0),
                         raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(t.name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def load(path: Path, tmp_path: Path):
    return models.load(str(path), cache_dir=tmp_path / "cache", device="cpu")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tensors(path: Path) -> dict[str, tuple[str, np.ndarray]]:
    reader = gguf.GGUFReader(path)
    return {t.name: (t.tensor_type.name, np.array(t.data)) for t in reader.tensors}


def dequant(path: Path, name: str) -> np.ndarray:
    t = next(t for t in gguf.GGUFReader(path).tensors if t.name == name)
    return gguf.quants.dequantize(t.data, t.tensor_type)


@pytest.mark.parametrize("source", ["f32", "q8_0"])
def test_folded_tensors_equal_the_in_memory_fold(tiny_gguf, tiny_q8, tmp_path, source):
    src = tiny_gguf if source == "f32" else tiny_q8
    model = load(src, tmp_path)
    steerer = manual(model, SITES)
    before = sha(src)
    out = steerer.export(tmp_path / "steered.gguf", format="gguf", strength=0.7)
    assert sha(src) == before  # the source is only read
    got, orig = tensors(out), tensors(src)
    hf = model.original_model
    with steerer.fold(0.7):
        for i, (name, proj) in enumerate([("attn_output", "self_attn.o_proj"), ("ffn_down", "mlp.down_proj")] * 3):
            layer = i // 2
            lin = hf.get_submodule(f"model.layers.{layer}.{proj}")
            if f"blk.{layer}.{name}.bias" not in got:
                assert lin.bias is None or not lin.bias.any()
                continue
            np.testing.assert_allclose(dequant(out, f"blk.{layer}.{name}.weight"), lin.weight.detach().numpy(), atol=1e-5)
            np.testing.assert_allclose(dequant(out, f"blk.{layer}.{name}.bias"), lin.bias.detach().numpy(), atol=1e-5)
            assert got[f"blk.{layer}.{name}.weight"][0] == "F32" and got[f"blk.{layer}.{name}.bias"][0] == "F32"
    folded = {"blk.0.attn_output.weight", "blk.1.ffn_down.weight", "blk.2.ffn_down.weight"}
    for name, (kind, data) in orig.items():  # everything not folded is byte-for-byte the source's
        if name not in folded:
            assert got[name][0] == kind and np.array_equal(got[name][1], data), name
    assert set(got) - set(orig) == {"blk.0.attn_output.bias", "blk.1.ffn_down.bias", "blk.2.ffn_down.bias"}
    fields = gguf.GGUFReader(out).fields
    record = json.loads(fields["lineas_tl.record"].contents())
    assert record["method"] == "manual" and record["strength"] == 0.7 and record["format"] == "gguf"
    assert record["fingerprint"]["architecture"] and record["source_file"] == src.name
    assert fields["tokenizer.ggml.tokens"].contents() == gguf.GGUFReader(src).fields["tokenizer.ggml.tokens"].contents()
    dq = fields["lineas_tl.dequantised_tensors"].contents() if "lineas_tl.dequantised_tensors" in fields else []
    assert sorted(dq) == (sorted(folded) if source == "q8_0" else [])


# Input-side folds at norm outputs: (site, GGUF projections it folds into, Hugging Face module).
NORM_FOLDS = {
    "blocks.0.ln1.hook_out": [("blk.0.attn_q", "self_attn.q_proj"), ("blk.0.attn_k", "self_attn.k_proj"),
                              ("blk.0.attn_v", "self_attn.v_proj")],
    "blocks.1.ln2.hook_out": [("blk.1.ffn_gate", "mlp.gate_proj"), ("blk.1.ffn_up", "mlp.up_proj")],
    "blocks.2.mlp.hook_in": [("blk.2.ffn_gate", "mlp.gate_proj"), ("blk.2.ffn_up", "mlp.up_proj")],
}


@pytest.mark.parametrize("source", ["f32", "q8_0"])
def test_norm_output_maps_fold_into_the_input_projections(tiny_gguf, tiny_q8, tmp_path, source):
    """ln2.hook_out (the paper's site) scales the columns of ffn_gate and ffn_up and adds their new
    biases; ln1.hook_out those of attn_q/k/v (q, k in llama.cpp's rotary row order)."""
    src = tiny_gguf if source == "f32" else tiny_q8
    model = load(src, tmp_path)
    steerer = manual(model, list(NORM_FOLDS))
    out = steerer.export(tmp_path / "steered.gguf", format="gguf", strength=0.7)
    got, orig = tensors(out), tensors(src)
    heads = {"attn_q": 4, "attn_k": 2}  # the tiny Llama's query and key-value heads
    folded = set()
    with steerer.fold(0.7):
        for base, proj in (pair for pairs in NORM_FOLDS.values() for pair in pairs):
            lin = model.original_model.get_submodule(f"model.layers.{base.split('.')[1]}.{proj}")
            weight, bias = lin.weight.detach().numpy(), lin.bias.detach().numpy()
            if (n := heads.get(base.rpartition(".")[2])) is not None:
                weight, bias = rotary_rows(weight, n), rotary_rows(bias, n)
            np.testing.assert_allclose(dequant(out, f"{base}.weight"), weight, atol=1e-5)
            np.testing.assert_allclose(dequant(out, f"{base}.bias"), bias, atol=1e-5)
            assert got[f"{base}.weight"][0] == "F32" and got[f"{base}.bias"][0] == "F32"
            folded.add(f"{base}.weight")
    for name, (kind, data) in orig.items():  # everything not folded is byte-for-byte the source's
        if name not in folded:
            assert got[name][0] == kind and np.array_equal(got[name][1], data), name
    assert set(got) - set(orig) == {w.replace(".weight", ".bias") for w in folded}
    fields = gguf.GGUFReader(out).fields
    dq = fields["lineas_tl.dequantised_tensors"].contents() if "lineas_tl.dequantised_tensors" in fields else []
    assert sorted(dq) == (sorted(folded) if source == "q8_0" else [])


@pytest.mark.parametrize("sites", [["blocks.0.hook_attn_out", "blocks.2.hook_mlp_out"],
                                   ["blocks.0.ln1.hook_out", *PAPER_SITES]])
def test_exported_gguf_reloads_and_computes_the_steered_model(tiny_gguf, tmp_path, sites):
    """Scale-only maps (no bias) reload through transformers' own GGUF reader: same logits as hooked."""
    model = load(tiny_gguf, tmp_path)
    steerer = manual(model, sites)
    for m in steerer.maps_.values():
        m.bias.data.zero_()
    out = steerer.export(tmp_path / "scaled.gguf", strength=0.9)
    again = models.load(str(out), cache_dir=tmp_path / "cache2", device="cpu")
    tokens = torch.tensor([[0, 5, 17, 3, 42, 8]])
    with torch.no_grad(), steerer.steer(0.9):
        hooked = model(tokens)
    with torch.no_grad():
        assert (again(tokens) - hooked).abs().max() <= 1e-4
        assert (model(tokens) - hooked).abs().max() > 1e-3


def test_without_a_source_gguf_a_llama_is_written_from_its_weights(llama_model, tmp_path):
    steerer = manual(llama_model, ["blocks.1.hook_mlp_out"])
    out = steerer.export(tmp_path / "from-hf.gguf", format="gguf")
    record = json.loads(gguf.GGUFReader(out).fields["lineas_tl.record"].contents())
    assert "Hugging Face weights" in record["source_file"]
    with steerer.fold(1.0):
        lin = llama_model.original_model.model.layers[1].mlp.down_proj
        np.testing.assert_allclose(dequant(out, "blk.1.ffn_down.bias"), lin.bias.detach().numpy(), atol=1e-5)
    assert [p.name for p in tmp_path.iterdir()] == ["from-hf.gguf"]  # no temporary file left


def test_refusals_name_the_problem(tiny_gguf, gpt2_model, tmp_path):
    model = load(tiny_gguf, tmp_path)
    steerer = manual(model, ["blocks.1.hook_mlp_out", "blocks.1.ln2.hook_normalized"])
    with pytest.raises(FoldError, match=r"blocks\.1\.ln2\.hook_normalized"):
        steerer.export(tmp_path / "a.gguf")
    ok = manual(model, ["blocks.1.hook_mlp_out"])
    ok.maps_["blocks.1.mlp.hook_out"].set_range(torch.full((32,), -1.0), torch.full((32,), 1.0))
    with pytest.raises(FoldError, match="support range"):
        ok.export(tmp_path / "b.gguf")
    with pytest.raises(FileExistsError, match="source GGUF"):
        manual(model, ["blocks.1.hook_mlp_out"]).export(tiny_gguf)
    (tmp_path / "c.gguf").write_text("x")
    with pytest.raises(FileExistsError, match="exists"):
        manual(model, ["blocks.1.hook_mlp_out"]).export(tmp_path / "c.gguf")
    with pytest.raises(ExportError, match="unsupported architecture 'gpt2'"):
        manual(gpt2_model, ["blocks.1.hook_mlp_out"]).export(tmp_path / "d.gguf")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        manual(model, ["blocks.1.hook_mlp_out"]).export(tmp_path / "e.gguf", source=tmp_path / "missing.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.gguf", "cache"]  # nothing half-written


def test_a_gguf_of_another_model_is_refused(tiny_gguf, llama_model, tmp_path):
    with torch.no_grad():
        llama_model.original_model.model.layers[1].mlp.down_proj.weight.mul_(1.5)
    with pytest.raises(FoldError, match="not this model's weight"):
        manual(llama_model, ["blocks.1.hook_mlp_out"]).export(tmp_path / "x.gguf", source=tiny_gguf)
