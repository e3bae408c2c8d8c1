"""Tiny models of several architectures, built in the tests: nothing is downloaded.

- ``native_model``: TransformerLens' own architecture (``TransformerBridge.boot_native``), no tokenizer.
- ``gpt2_model`` / ``llama_model``: Hugging Face GPT-2 and Llama (SmolLM-style: RMSNorm, rotary,
  grouped-query attention, gated MLP) saved to a temp directory with a byte-level BPE tokenizer
  trained on the spot, and loaded with ``TransformerBridge.boot_transformers(that_dir)``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

CORPUS = [
    "the cat sat on the mat and looked at the dog",
    "a dog ran in the park with a red ball",
    "you are a stupid idiot and I hate you",
    "have a lovely day my dear friend",
    "the weather today is warm and sunny",
    "what a terrible awful horrible day",
    "thank you so much for your kind help",
    "shut up you dumb moron nobody likes you",
]

SOURCE_WORDS = ["stupid", "idiot", "hate", "dumb", "moron", "awful", "terrible", "horrible"]
TARGET_WORDS = ["lovely", "kind", "dear", "warm", "sunny", "thank", "friend", "help"]
FILLER = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "in", "park", "you", "are", "day"]


def make_prompts(words: list[str], n: int, seed: int) -> list[str]:
    """``n`` short prompts of 3-8 words mixing ``words`` with neutral filler (lengths vary)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        k = int(torch.randint(3, 9, (1,), generator=g))
        pick = []
        for _ in range(k):
            pool = words if torch.rand(1, generator=g) < 0.5 else FILLER
            pick.append(pool[int(torch.randint(len(pool), (1,), generator=g))])
        out.append(" ".join(pick))
    return out


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tk.train_from_iterator(CORPUS * 10, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<unk>",
        pad_token="<|endoftext|>",
    )
    path = tmp_path_factory.mktemp("tokenizer")
    tok.save_pretrained(path)
    return path


def _save_hf(model: torch.nn.Module, tokenizer_dir: Path, path: Path) -> Path:
    from transformers import AutoTokenizer

    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def gpt2_dir(tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    # initializer_range 0.2: activations of order 1, as in a trained model (0.02 makes them tiny)
    cfg = GPT2Config(vocab_size=320, n_positions=64, n_embd=32, n_layer=3, n_head=4, initializer_range=0.2)
    return _save_hf(GPT2LMHeadModel(cfg), tokenizer_dir, tmp_path_factory.mktemp("gpt2"))


# The shape shared by the tiny Llama and Gemma-2 decoders (initializer_range 0.2: activations of
# order 1, as in a trained model).
TINY_DECODER = dict(
    vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.2,
)  # fmt: skip


@pytest.fixture(scope="session")
def llama_dir(tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(**TINY_DECODER, tie_word_embeddings=True)
    return _save_hf(LlamaForCausalLM(cfg), tokenizer_dir, tmp_path_factory.mktemp("llama"))


def boot(path: Path):
    from transformer_lens import TransformerBridge

    return TransformerBridge.boot_transformers(str(path), device="cpu").eval()


@pytest.fixture
def gpt2_model(gpt2_dir: Path):
    return boot(gpt2_dir)


@pytest.fixture
def llama_model(llama_dir: Path):
    return boot(llama_dir)


@pytest.fixture(params=["gpt2", "llama"])
def hf_model(request: pytest.FixtureRequest, gpt2_dir: Path, llama_dir: Path):
    """Each Hugging Face architecture in turn."""
    return boot(gpt2_dir if request.param == "gpt2" else llama_dir)


def native(n_layers: int = 3, d_model: int = 32, d_vocab: int = 100, seed: int = 0):
    from transformer_lens import TransformerBridge, TransformerBridgeConfig

    cfg = TransformerBridgeConfig(
        d_model=d_model,
        d_head=8,
        n_layers=n_layers,
        n_ctx=64,
        n_heads=d_model // 8,
        d_vocab=d_vocab,
        d_mlp=2 * d_model,
        act_fn="gelu",
        seed=seed,
    )
    return TransformerBridge.boot_native(cfg).eval()


@pytest.fixture
def native_model():
    return native()


@pytest.fixture
def text_sets() -> dict[str, list[str]]:
    """Source (insulting words) and target (kind words) prompts: 40 each."""
    return {
        "source": make_prompts(SOURCE_WORDS, 40, seed=1),
        "target": make_prompts(TARGET_WORDS, 40, seed=2),
    }


@pytest.fixture(scope="session")
def smollm2():
    """The real embedded default model (default user cache: fast after the first run)."""
    from lineas_tl import models

    return models.load("smollm2-135m")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run faster on one thread (OpenMP spin-waits badly on a busy 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# A ChatML-like template (SmolLM2's shape: a default system prompt, role headers, a generation
# prompt) over the tiny tokenizer's own special token, so no new token ids are needed.
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if loop.first and m['role'] != 'system' %}<|endoftext|>system\nBe kind.\n{% endif %}"
    "<|endoftext|>{{ m['role'] }}\n{{ m['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|endoftext|>assistant\n{% endif %}"
)


@pytest.fixture(scope="session")
def chat_llama_dir(llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama with a chat template on its tokenizer."""
    import shutil

    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("chat_llama")
    for f in llama_dir.iterdir():
        if f.is_file():
            shutil.copy(f, path / f.name)
    tok = AutoTokenizer.from_pretrained(llama_dir)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(path)
    return path


@pytest.fixture
def chat_llama_model(chat_llama_dir: Path):
    return boot(chat_llama_dir)


@pytest.fixture(scope="session")
def gemma_dir(tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Gemma-2 style: post-attention and post-MLP norms, the LinEAS paper's own sites."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    cfg = Gemma2Config(**TINY_DECODER, head_dim=8)
    return _save_hf(Gemma2ForCausalLM(cfg), tokenizer_dir, tmp_path_factory.mktemp("gemma2"))


@pytest.fixture
def gemma_model(gemma_dir: Path):
    return boot(gemma_dir)
