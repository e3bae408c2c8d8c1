"""``lineas-tl export --format gguf|control-vector|hf``: files written, one-line errors on bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_cli import assert_one_line_error, invoke
from test_fold import manual

from lineas_tl.steerer import HookedSteerer

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def steerers(llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An affine and a shift-only steerer on the tiny Llama, saved."""
    from transformer_lens import TransformerBridge

    model = TransformerBridge.boot_transformers(str(llama_dir), device="cpu").eval()
    tmp = tmp_path_factory.mktemp("export-cli")
    affine = manual(model, ["blocks.1.hook_mlp_out", "blocks.2.hook_attn_out"])
    shift: HookedSteerer = manual(model, ["blocks.1.hook_mlp_out"])
    shift.maps_["blocks.1.mlp.hook_out"].weight.data.fill_(1.0)
    affine.save(tmp / "affine")
    shift.save(tmp / "shift")
    return {"affine": tmp / "affine", "shift": tmp / "shift"}


def test_each_format_writes_its_file(steerers, llama_dir, tmp_path):
    common = ["--model", llama_dir, "--strength", "0.5"]
    res = invoke("export", *common, "--steerer", steerers["affine"], "--format", "gguf", "--out", tmp_path / "a.gguf")
    assert res.exit_code == 0, res.output + res.stderr
    assert "(strength 0.5) as gguf" in res.stdout
    assert gguf.GGUFReader(tmp_path / "a.gguf").fields["lineas_tl.strength"].contents() == 0.5
    res = invoke("export", *common, "--steerer", steerers["shift"], "-f", "control-vector", "--out", tmp_path / "c.gguf")
    assert res.exit_code == 0, res.output + res.stderr
    assert [t.name for t in gguf.GGUFReader(tmp_path / "c.gguf").tensors] == ["direction.1"]
    res = invoke("export", *common, "--steerer", steerers["affine"], "--format", "hf", "--out", tmp_path / "hf")
    assert res.exit_code == 0, res.output + res.stderr
    assert (tmp_path / "hf" / "config.json").exists()


def test_the_default_format_is_gguf_as_in_python(steerers, llama_dir, tmp_path):
    import inspect

    assert inspect.signature(HookedSteerer.export).parameters["format"].default == "gguf"
    res = invoke("export", "--model", llama_dir, "--steerer", steerers["affine"], "--out", tmp_path / "d.gguf")
    assert res.exit_code == 0, res.output + res.stderr
    assert "as gguf" in res.stdout and gguf.GGUFReader(tmp_path / "d.gguf").tensors


def test_errors_are_one_line(steerers, llama_dir, tmp_path):
    common = ["--model", llama_dir, "--steerer", steerers["affine"]]
    assert_one_line_error(invoke("export", *common, "--format", "onnx", "--out", tmp_path / "x"), "unknown --format")
    assert_one_line_error(
        invoke("export", *common, "--format", "control-vector", "--out", tmp_path / "x.gguf"),
        "cannot be written as a llama.cpp control vector", "format='gguf'",
    )
    assert_one_line_error(
        invoke("export", *common, "--format", "gguf", "--source-gguf", tmp_path / "nope.gguf", "--out", tmp_path / "y"),
        "--source-gguf", "does not exist",
    )
    assert_one_line_error(invoke("export", *common, "--strength", "strong", "--out", tmp_path / "z"), "--strength")
    assert list(tmp_path.iterdir()) == []


def test_unsupported_architecture_and_unfoldable_site(gpt2_dir, gpt2_model, tmp_path):
    steerer = manual(gpt2_model, ["blocks.1.hook_mlp_out"])
    steerer.save(tmp_path / "gpt2-steerer")
    res = invoke("export", "--model", gpt2_dir, "--steerer", tmp_path / "gpt2-steerer", "--format", "gguf",
                 "--out", tmp_path / "g.gguf")
    assert_one_line_error(res, "unsupported architecture 'gpt2'")
    unfoldable = manual(gpt2_model, ["blocks.1.ln2.hook_normalized"])
    unfoldable.save(tmp_path / "ln-steerer")
    res = invoke("export", "--model", gpt2_dir, "--steerer", tmp_path / "ln-steerer", "--format", "hf",
                 "--out", tmp_path / "h")
    assert_one_line_error(res, "cannot fold", "blocks.1.ln2.hook_normalized")
