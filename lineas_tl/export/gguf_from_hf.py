"""A GGUF from a Hugging Face Llama model in memory (F32), for models that were not loaded from one.

``format="gguf"`` starts from the model's own GGUF when there is one. When there is none, this
writes one from the weights and tokenizer, the way llama.cpp's ``convert_hf_to_gguf.py`` does for
the llama architecture (the same metadata keys, the same tensor names, ``q``/``k`` rows permuted to
llama.cpp's rotary layout, a byte-level BPE tokenizer as ``tokenizer.ggml.model = "gpt2"``). Only
Llama-architecture models with a byte-level BPE tokenizer are supported; anything else is refused
with a pointer to llama.cpp's converter. Everything is written as F32: nothing is quantised.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from lineas_tl.export.common import ExportError, atomic_path, check_new_path, clean_key

__all__ = ["rotary_rows", "write_llama_gguf"]


# The parameters of a plain LlamaForCausalLM (a bridge also lists them under its own aliases).
_LLAMA_KEY = re.compile(
    r"^(model\.(embed_tokens|norm)|lm_head|model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj|"
    r"input_layernorm|post_attention_layernorm))\.weight$"
)


def rotary_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face's rotary row order to llama.cpp's (as ``convert_hf_to_gguf.py``'s ``permute``)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(hf_model: nn.Module, tokenizer: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``hf_model`` (a ``LlamaForCausalLM``) and its ``tokenizer`` as an F32 GGUF at new ``path``.

    Raises:
        ExportError: not a Llama model, or the tokenizer is not a byte-level BPE.
    """
    import gguf

    cfg = hf_model.config
    if getattr(cfg, "model_type", None) != "llama":
        raise ExportError(
            f"unsupported architecture {getattr(cfg, 'model_type', None)!r}: lineas-tl writes a GGUF from "
            "Hugging Face weights for Llama models only. Load the model from its GGUF instead "
            "(lineas_tl.models.load('model.gguf')), or export format='hf' and convert it with llama.cpp's "
            "convert_hf_to_gguf.py"
        )
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        raise ExportError(
            "a Llama model with biases (attention_bias / mlp_bias, e.g. a folded format='hf' export) cannot be "
            "written as a llama-architecture GGUF here: export format='gguf' from the unfolded model, or convert "
            "this one with llama.cpp's convert_hf_to_gguf.py"
        )
    vocab = _bpe_vocab(tokenizer)
    target = check_new_path(path)
    n_head, n_kv = int(cfg.num_attention_heads), int(cfg.num_key_value_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head)
    rope = getattr(cfg, "rope_parameters", None) or {}
    theta = float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)))
    state: dict[str, np.ndarray] = {}
    for k, v in hf_model.state_dict().items():
        state.setdefault(clean_key(k), v.detach().float().cpu().numpy())
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, int(cfg.num_hidden_layers))
    with atomic_path(target) as tmp:
        w = gguf.GGUFWriter(tmp, "llama")
        w.add_name(str(getattr(cfg, "_name_or_path", "") or "model"))
        w.add_file_type(gguf.LlamaFileType.ALL_F32)
        w.add_block_count(int(cfg.num_hidden_layers))
        w.add_context_length(int(cfg.max_position_embeddings))
        w.add_embedding_length(int(cfg.hidden_size))
        w.add_feed_forward_length(int(cfg.intermediate_size))
        w.add_head_count(n_head)
        w.add_head_count_kv(n_kv)
        w.add_rope_freq_base(theta)
        w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
        w.add_rope_dimension_count(head_dim)
        w.add_vocab_size(len(vocab["tokens"]))
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("default")
        w.add_token_list(vocab["tokens"])
        w.add_token_types(vocab["types"])
        w.add_token_merges(vocab["merges"])
        bos = getattr(tokenizer, "bos_token_id", None)
        w.add_add_bos_token(bos is not None and tokenizer("a").input_ids[:1] == [bos])
        for kind in ("bos", "eos", "unk", "pad"):
            tid = getattr(tokenizer, f"{kind}_token_id", None)
            if tid is not None:
                w.add_key_value(f"tokenizer.ggml.{kind}_token_id", int(tid), gguf.GGUFValueType.UINT32)
        written: set[str] = set()
        for key, value in state.items():
            if not _LLAMA_KEY.match(key):  # the bridge's aliases of the same parameters
                continue
            base = name_map.get_name(key, try_suffixes=(".weight",))
            if base is None or base in written or (key == "lm_head.weight" and cfg.tie_word_embeddings):
                continue
            if key.endswith("q_proj.weight"):
                value = rotary_rows(value, n_head)
            elif key.endswith("k_proj.weight"):
                value = rotary_rows(value, n_kv)
            w.add_tensor(base, np.ascontiguousarray(value, dtype=np.float32))
            written.add(base)
        expected = 2 + 9 * int(cfg.num_hidden_layers) + ("output.weight" in written)
        if len(written) != expected:
            raise ExportError(f"found {len(written)} of the {expected} llama tensors: cannot write this model as a GGUF")
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return target


def _bpe_vocab(tokenizer: Any) -> dict[str, list[Any]]:
    """Tokens (by id), token types and merges of a byte-level BPE ``tokenizer``."""
    if tokenizer is None or not hasattr(tokenizer, "save_pretrained"):
        raise ExportError("the model has no tokenizer: a GGUF needs one (load the model with its tokenizer)")
    with tempfile.TemporaryDirectory() as d:
        tokenizer.save_pretrained(d)
        file = Path(d) / "tokenizer.json"
        spec = json.loads(file.read_text()) if file.is_file() else {}
    model = spec.get("model", {})
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
        raise ExportError(
            "only byte-level BPE tokenizers (GPT-2 style) are written to a GGUF here; convert this model "
            "with llama.cpp's convert_hf_to_gguf.py"
        )
    vocab: dict[str, int] = dict(model["vocab"])
    for added in spec.get("added_tokens", []):
        vocab[added["content"]] = int(added["id"])
    n = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(n)]
    for tok, i in vocab.items():
        tokens[i] = tok
    special = {int(a["id"]) for a in spec.get("added_tokens", []) if a.get("special")}
    types = [3 if i in special else 1 for i in range(n)]  # gguf.TokenType.CONTROL / NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return {"tokens": tokens, "types": types, "merges": merges}
