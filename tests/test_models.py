"""Model loading: the embedded SmolLM2 (slow), the cache mechanics and errors (fast)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from transformer_lens.model_bridge import TransformerBridge

from lineas_tl import models


def test_available() -> None:
    assert models.available() == ["smollm2-135m"]


def test_hub_name_fails_offline_with_clear_message() -> None:
    with pytest.raises(OSError, match="offline"):
        models.load("some-org/not-a-real-model")


def test_local_dir(llama_dir: Path) -> None:
    model = models.load(str(llama_dir), device="cpu")
    assert not model.training
    assert "blocks.0.hook_mlp_out" in model.hook_dict


def test_refuses_foreign_cache_dir(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("not a model")
    with pytest.raises(FileExistsError):
        models.load("smollm2", cache_dir=tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "not a model"


@pytest.fixture
def tiny_gguf(monkeypatch: pytest.MonkeyPatch, llama_dir: Path) -> None:
    """Make "loading the GGUF" return the tiny test Llama, so cache mechanics run fast."""
    import transformers

    real_model = transformers.AutoModelForCausalLM.from_pretrained
    real_tok = transformers.AutoTokenizer.from_pretrained

    def model_from_pretrained(path, *args, gguf_file=None, **kwargs):
        return real_model(llama_dir if gguf_file else path, *args, **kwargs)

    def tok_from_pretrained(path, *args, gguf_file=None, **kwargs):
        return real_tok(llama_dir if gguf_file else path, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", model_from_pretrained)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", tok_from_pretrained)


def test_cache_written_once_and_reused(
    tiny_gguf: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "smollm2"
    first = models.load(cache_dir=cache)
    assert {"config.json", "model.safetensors", "tokenizer_config.json", models._MARKER} <= {
        p.name for p in cache.iterdir()
    }
    assert [p.name for p in tmp_path.iterdir()] == ["smollm2"]  # no temp dir left behind

    def no_convert(local_dir: Path) -> None:
        raise AssertionError("converted again despite a valid cache")

    monkeypatch.setattr(models, "_convert_gguf", lambda *a: no_convert(a[1]))
    second = models.load(cache_dir=cache)
    tokens = torch.tensor([[1, 2, 3, 4]])
    torch.testing.assert_close(first(tokens), second(tokens))


def test_interrupted_conversion_leaves_no_cache(
    tiny_gguf: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import safetensors.torch

    def boom(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_model", boom)
    with pytest.raises(KeyboardInterrupt):
        models.load(cache_dir=tmp_path / "smollm2")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def llama_gguf(llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny test Llama written as a real GGUF file (F32)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lineas_tl.export.gguf_from_hf import write_llama_gguf

    hf = AutoModelForCausalLM.from_pretrained(llama_dir)
    return write_llama_gguf(hf, AutoTokenizer.from_pretrained(llama_dir), tmp_path_factory.mktemp("g") / "tiny.gguf")


def test_any_gguf_loads_converted_once_and_records_its_file(
    llama_gguf: Path, llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from transformers import AutoModelForCausalLM

    cache = tmp_path / "cache"
    model = models.load(str(llama_gguf), cache_dir=cache, device="cpu")
    assert getattr(model, models.SOURCE_ATTR) == str(llama_gguf)
    assert json.loads((cache / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    tokens = torch.tensor([[0, 5, 17, 3, 42]])
    with torch.no_grad():
        reference = AutoModelForCausalLM.from_pretrained(llama_dir)(tokens).logits
        torch.testing.assert_close(model(tokens), reference, atol=1e-5, rtol=1e-5)
    monkeypatch.setattr(models, "_convert_gguf", lambda *a: pytest.fail("converted again despite a valid cache"))
    again = models.load(str(llama_gguf), cache_dir=cache, device="cpu")
    assert getattr(again, models.SOURCE_ATTR) == str(llama_gguf)
    assert models.gguf_cache_dir(llama_gguf).parent == models.cache_root() / "models"


def test_gguf_load_failures_name_their_cause(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        models.load(str(tmp_path / "missing.gguf"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF not really")
    with pytest.raises(ValueError, match="transformers cannot read the GGUF .*bad.gguf"):
        models.load(str(bad), cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(OSError, match="could not load the local model directory .*broken"):
        models.load(str(broken))


@pytest.mark.slow
def test_smollm2_loads_from_cache_and_knows_paris(
    smollm2: TransformerBridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert models._cache_valid(models.smollm2_cache_dir())
    assert getattr(smollm2, models.SOURCE_ATTR).endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    monkeypatch.setattr(models, "_convert_gguf", lambda *a: pytest.fail("cache not reused"))
    start = time.perf_counter()
    again = models.load("smollm2")
    assert time.perf_counter() - start < 30
    assert not again.training
    out = smollm2.generate(
        "The capital of France is", max_new_tokens=5, do_sample=False, verbose=False
    )
    assert "Paris" in out


@pytest.mark.slow
def test_smollm2_hook_sites(smollm2: TransformerBridge) -> None:
    cfg = smollm2.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.d_vocab) == (30, 576, 49152)
    for i in range(30):
        assert f"blocks.{i}.hook_attn_out" in smollm2.hook_dict
        assert f"blocks.{i}.hook_mlp_out" in smollm2.hook_dict
    assert next(smollm2.parameters()).dtype == torch.float32


@pytest.mark.slow
def test_smollm2_kv_cache_generation_matches(smollm2: TransformerBridge) -> None:
    kwargs = dict(max_new_tokens=5, do_sample=False, verbose=False)
    with_cache = smollm2.generate("The capital of France is", use_past_kv_cache=True, **kwargs)
    without = smollm2.generate("The capital of France is", use_past_kv_cache=False, **kwargs)
    # transformers 5.24 renamed the Llama layers' `past_key_values` kwarg to `cache`, which the
    # TransformerLens 4.3 attention bridge does not read: cached generation forgets the prompt.
    assert with_cache == without
