"""Parity in a real llama.cpp (llama-cpp-python, the ``serve`` extra): exported GGUFs and control vectors.

Two levels:

- **Exact**, on the tiny Llama written as an F32 GGUF: llama.cpp's logits for the exported file
  equal the hooked TransformerLens model's within 1e-2 (llama.cpp keeps its KV cache in F16, which
  alone moves these logits by ~2e-3), while the steering moves them by ~3.
- **The real thing**, on the embedded SmolLM2 GGUF (Q4_1 weights; llama.cpp also quantises the
  activations entering each Q4_1 product to 8 bits). Plain logits already differ from the bridge's
  by up to ~0.8, so the check is on what the steering *changes*: the steered-minus-plain
  last-position logits of llama.cpp and of the bridge point the same way (cosine), the steered
  top-1 token agrees, greedy continuations agree, and the concept score (VADER negativity) moves
  the same way. The folded GGUF and the control vector, exactly equivalent on paper, differ from
  each other in llama.cpp by about as much as either differs from the bridge.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest
import torch
from llama_cpp import Llama
from llama_cpp import llama_cpp as lib
from test_fold import manual

from lineas_tl import HookedSteerer
from lineas_tl.export.gguf_from_hf import write_llama_gguf

gguf = pytest.importorskip("gguf")

TOKENS = [0, 5, 17, 3, 42, 8, 99, 23]


def open_llama(path: Path, control_vector: Path | None = None, n_ctx: int = 256) -> Llama:
    """llama.cpp on ``path``; a control vector is applied the way llama.cpp's own loader does."""
    llm = Llama(model_path=str(path), logits_all=True, n_ctx=n_ctx, verbose=False, n_threads=1, seed=0)
    if control_vector is not None:
        n_embd, n_layer = llm.n_embd(), int(lib.llama_model_n_layer(llm.model))
        data = np.zeros((n_layer - 1) * n_embd, dtype=np.float32)  # starts at layer 1, as llama.cpp's
        for t in gguf.GGUFReader(control_vector).tensors:
            layer = int(t.name.removeprefix("direction."))
            assert layer >= 1 and t.tensor_type.name == "F32" and t.data.shape == (n_embd,)
            data[(layer - 1) * n_embd : layer * n_embd] = t.data
        ptr = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        assert lib.llama_set_adapter_cvec(llm.ctx, ptr, data.size, n_embd, 1, n_layer - 1) == 0
        llm._lineas_cvec = data  # keep the buffer alive with the context
    return llm


def cpp_logits(llm: Llama, tokens: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(tokens)
    return np.array(llm.scores[: len(tokens)], dtype=np.float64)


def cpp_greedy(llm: Llama, tokens: list[int], n: int) -> list[int]:
    out: list[int] = []
    for tok in llm.generate(tokens, temp=0.0, top_k=1, reset=True):
        out.append(int(tok))
        if len(out) == n:
            return out
    return out


@pytest.fixture(scope="module")
def tiny(llama_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from transformer_lens import TransformerBridge

    model = TransformerBridge.boot_transformers(str(llama_dir), device="cpu").eval()
    path = write_llama_gguf(model.original_model, model.tokenizer, tmp_path_factory.mktemp("cpp") / "tiny.gguf")
    return model, path


def test_plain_tiny_gguf_matches_the_bridge(tiny):
    model, path = tiny
    with torch.no_grad():
        ref = model(torch.tensor([TOKENS]))[0].double().numpy()
    llm = open_llama(path, n_ctx=64)
    try:
        assert np.abs(cpp_logits(llm, TOKENS) - ref).max() <= 1e-2
    finally:
        llm.close()


def test_folded_gguf_is_exact_in_llama_cpp(tiny, tmp_path):
    """Affine maps at every kind of foldable site, and shifts: llama.cpp computes the hooked model."""
    model, path = tiny
    sites = ["blocks.0.attn.hook_z", "blocks.0.hook_attn_out", "blocks.1.mlp.hook_post", "blocks.1.hook_mlp_out",
             "blocks.2.hook_mlp_out"]
    steerer = manual(model, sites)
    out = steerer.export(tmp_path / "steered.gguf", format="gguf", strength=0.7, source=path)
    with torch.no_grad():
        plain = model(torch.tensor([TOKENS]))[0].double().numpy()
        with steerer.steer(0.7):
            hooked = model(torch.tensor([TOKENS]))[0].double().numpy()
    llm = open_llama(out, n_ctx=64)
    try:
        got = cpp_logits(llm, TOKENS)
    finally:
        llm.close()
    assert np.abs(hooked - plain).max() > 0.5
    assert np.abs(got - hooked).max() <= 1e-2


def test_control_vector_is_exact_in_llama_cpp(tiny, tmp_path):
    """Shifts after blocks 1 and 2 (mlp_out, resid_post, resid_pre of the next block) add up per block."""
    model, path = tiny
    steerer = manual(model, ["blocks.1.hook_mlp_out", "blocks.2.hook_resid_pre", "blocks.2.hook_mlp_out"])
    for m in steerer.maps_.values():
        m.weight.data.fill_(1.0)
    out = steerer.export(tmp_path / "cvec.gguf", format="control-vector", strength=0.8)
    fields = gguf.GGUFReader(out).fields
    assert fields["general.architecture"].contents() == "controlvector"
    assert fields["controlvector.model_hint"].contents() == "llama"
    with torch.no_grad(), steerer.steer(0.8):
        hooked = model(torch.tensor([TOKENS]))[0].double().numpy()
    llm = open_llama(path, control_vector=out, n_ctx=64)
    try:
        got = cpp_logits(llm, TOKENS)
    finally:
        llm.close()
    assert np.abs(got - hooked).max() <= 1e-2


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.slow
def test_smollm2_steered_in_llama_cpp_like_in_transformer_lens(smollm2, tmp_path, one_thread):
    from lineas_tl.concepts import get_concept

    concept = get_concept("sentiment")
    split = concept.split(32, seed=0)
    sites = [f"blocks.{i}.hook_mlp_out" for i in range(1, 30)]
    add = HookedSteerer(smollm2, sites).fit(split.source, split.target, method="mean_act", progress=False)
    aff = HookedSteerer(smollm2, sites).fit(split.source, split.target, method="linear_act", support=None,
                                            progress=False)
    source = Path(smollm2.lineas_tl_source_gguf)
    runs = {  # name: (steerer, llama.cpp model file, control vector)
        "plain": (None, source, None),
        "mean_act gguf": (add, add.export(tmp_path / "add.gguf", format="gguf"), None),
        "mean_act control vector": (add, source, add.export(tmp_path / "add-cvec.gguf", format="control-vector")),
        "linear_act gguf": (aff, aff.export(tmp_path / "aff.gguf", format="gguf"), None),
    }
    prompts = concept.eval_prompts[:6]
    tokens = [smollm2.to_tokens(p)[0].tolist() for p in prompts]  # BOS included, as llama.cpp adds it
    n_new = 12
    results, tl_runs = {}, {}
    for name, (steerer, model_file, cvec) in runs.items():
        if id(steerer) not in tl_runs:  # the bridge's side, once per steerer
            with torch.no_grad(), (steerer.steer(1.0) if steerer is not None else _nothing()):
                tl_last = np.array([smollm2(torch.tensor([t]))[0, -1].double().numpy() for t in tokens])
                tl_gen = [_tl_greedy(smollm2, t, n_new) for t in tokens]
            tl_runs[id(steerer)] = (tl_last, tl_gen)
        tl_last, tl_gen = tl_runs[id(steerer)]
        llm = open_llama(model_file, control_vector=cvec)
        try:
            cpp_last = np.array([cpp_logits(llm, t)[-1] for t in tokens])
            cpp_gen = [cpp_greedy(llm, t, n_new) for t in tokens]
        finally:
            llm.close()
        score = {
            side: float(np.mean(concept.score([smollm2.tokenizer.decode(g) for g in gens])))
            for side, gens in (("tl", tl_gen), ("cpp", cpp_gen))
        }
        results[name] = (tl_last, cpp_last, tl_gen, cpp_gen, score)
    tl0, cpp0, *_, score0 = results.pop("plain")
    for name, (tl_last, cpp_last, tl_gen, cpp_gen, score) in results.items():
        cos = [cosine(a - b, c - d) for a, b, c, d in zip(tl_last, tl0, cpp_last, cpp0)]
        top1 = np.mean([a.argmax() == b.argmax() for a, b in zip(tl_last, cpp_last)])
        same = np.mean([a == b for ga, gb in zip(tl_gen, cpp_gen) for a, b in zip(ga, gb)])
        whole = np.mean([ga == gb for ga, gb in zip(tl_gen, cpp_gen)])
        msg = (f"{name}: delta cosines {np.round(cos, 3)}, top-1 {top1:.2f}, greedy tokens agreeing {same:.2f}, "
               f"whole continuations agreeing {whole:.2f}, negativity {score} (plain {score0})")
        print(msg)
        assert np.median(cos) >= 0.95 and min(cos) >= 0.5, msg
        assert top1 >= 0.8, msg
        assert same >= 0.6 and whole >= 0.5, msg
        # the concept score moves the same way (down: less negativity) in both
        assert score["tl"] < score0["tl"] and score["cpp"] < score0["cpp"], msg


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _tl_greedy(model, tokens: list[int], n: int) -> list[int]:
    x = torch.tensor([tokens])
    for _ in range(n):
        x = torch.cat([x, model(x)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return x[0, len(tokens) :].tolist()
