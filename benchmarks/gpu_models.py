"""Models for ``bench_gpu.py``: SmolLM2's shapes with random weights, built from a config (no download).

The same weights are read twice: through ``TransformerBridge`` (what lineas-tl steers) and as a
plain Hugging Face ``LlamaForCausalLM`` (the hand-written floor and HF ``generate``), each its own
copy so the bridge's wrapping never touches the plain model.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

COMMON = dict(max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=True,
              bos_token_id=1, eos_token_id=2, pad_token_id=2)  # fmt: skip
SHAPES: dict[str, dict[str, Any]] = {
    "135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                 num_attention_heads=9, num_key_value_heads=3, rope_theta=100000.0),
    "1.7b": dict(vocab_size=49152, hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
                 num_attention_heads=32, num_key_value_heads=32, rope_theta=130000.0),
    "tiny": dict(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0, initializer_range=0.2),
}  # fmt: skip
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def config(shape: str) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(**COMMON, **SHAPES[shape])


def _tokenizer(path: str) -> Any:
    """A tiny byte-level BPE tokenizer: the bridge wants one; the prompts are token ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.train_from_iterator(["a tiny tokenizer only so that the bridge boots"], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<unk>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    ))  # fmt: skip
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                  pad_token="<|endoftext|>", unk_token="<unk>")  # fmt: skip
    tok.save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


def build(shape: str, dtype: str, device: str, seed: int = 0) -> tuple[Any, Any]:
    """``(bridge, hf)``: the same random weights through ``TransformerBridge`` and as a plain HF model."""
    from transformer_lens import TransformerBridge
    from transformers import LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    cfg = config(shape)
    torch.manual_seed(seed)
    with torch.device(device):  # initialise on the device: a 1.7B model initialises slowly on a CPU
        plain = LlamaForCausalLM(cfg).to(DTYPES[dtype]).eval()
        wrapped = LlamaForCausalLM(cfg).to(DTYPES[dtype]).eval()
    wrapped.load_state_dict(plain.state_dict())
    plain.requires_grad_(False)
    with tempfile.TemporaryDirectory() as tmp:
        cfg.save_pretrained(tmp)
        tok = _tokenizer(tmp)
        bridge = TransformerBridge.boot_transformers(tmp, hf_model=wrapped, tokenizer=tok, device=device)
    return bridge.eval(), plain


def token_prompts(n: int, low: int, high: int, seed: int, lengths: tuple[int, int] = (8, 16)) -> list[list[int]]:
    """``n`` prompts of token ids in ``[low, high)``, each of a length in ``lengths`` (inclusive)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        k = int(torch.randint(lengths[0], lengths[1] + 1, (1,), generator=g))
        out.append(torch.randint(low, high, (k,), generator=g).tolist())
    return out
