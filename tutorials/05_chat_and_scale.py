# %% [markdown]
# # Chat models and big models
#
# The embedded default, SmolLM2-135M-Instruct, is a chat model: in use it sees conversations
# rendered with its chat template, not raw text. This tutorial fits and steers it in that form,
# then shows that the same code fits a model split across devices, and how to bound the memory of
# a fit with activation checkpointing.
#
# Run: `python tutorials/05_chat_and_scale.py` (add `--quick` or `LINEAS_TL_QUICK=1` for a fast pass).

# %%
import os
import sys

import torch

from lineas_tl import HookedSteerer, collect_activations
from lineas_tl.chat import render
from lineas_tl.checkpointing import activation_checkpointing
from lineas_tl.concepts import chat_prompts, get_concept
from lineas_tl.devices import block_devices, split
from lineas_tl.models import load

QUICK = "--quick" in sys.argv or os.environ.get("LINEAS_TL_QUICK") == "1"
STEPS = 3 if QUICK else None  # None: the library's default fit
N_FIT, N_EVAL = (8, 2) if QUICK else (32, 8)

model = load("smollm2-135m")

# %% [markdown]
# ## Conversations as prompts
# A prompt can be a conversation, a list of `{"role", "content"}` messages. It is rendered with the
# tokenizer's own chat template, with the generation prompt (`<|im_start|>assistant\n`) at the end
# so that the model's next token starts its reply. Pooling covers the user turn's *content* tokens
# only (`chat_pool="user"`, the default): the template's fixed tokens, like SmolLM2's default
# system prompt, are the same in every prompt and would only dilute the difference between source
# and target.

# %%
conversation = [{"role": "user", "content": "My neighbour is such a"}]
rendered = render(model.tokenizer, conversation)
print(rendered.text)
print("pooled tokens:", repr(model.tokenizer.decode(rendered.ids[rendered.pool_mask.bool()])))

# %% [markdown]
# ## Fit in chat form
# A concept's prompts in chat form are user turns asking the model to continue the text
# (`concept.chat_split`); plain strings with `chat=True` would become bare user turns.

# %%
toxicity = get_concept("toxicity")
source, target = toxicity.chat_split(n_fit=N_FIT, seed=0)
fit_args = {} if STEPS is None else {"steps": STEPS}
steerer = HookedSteerer(model).fit(source, target, progress=not QUICK, **fit_args)
print(steerer, f"({len(steerer.history_['loss'])} steps)")

# %% [markdown]
# ## Steer the assistant's reply
# `positions="generated"` steers only the new tokens, which in chat form are exactly the
# assistant's reply; `return_type="continuation"` returns the reply alone. Batches of
# conversations are left-padded, and give the same tokens as one conversation at a time, with
# or without the KV cache.

# %%
prompts = chat_prompts(toxicity.eval_prompts[:N_EVAL])
for strength in (0.0, 1.0):
    torch.manual_seed(0)
    replies = steerer.generate(prompts, strength=strength, positions="generated", max_new_tokens=16,
                               return_type="continuation")
    scores = toxicity.scorer(replies)
    print(f"strength {strength}: mean toxicity {sum(scores) / len(scores):.3f}; {replies[0]!r}")

# %% [markdown]
# The collector reads the same pooled features from conversations:

# %%
acts = collect_activations(model, source[:2], "blocks.10.hook_mlp_out", progress=False)
print({site: tuple(x.shape) for site, x in acts.items()})

# %% [markdown]
# ## The same code on a model split across devices
# `models.load(name_or_dir, device_map=..., n_devices=...)` hands a split to TransformerLens
# (GPU-only maps). `lineas_tl.devices.split` places an already loaded model by blocks, across
# GPUs or a GPU and the CPU. Nothing else changes: each map is created on the device its site's
# activation is computed on, token batches go to the embedding's device, and the loss is reduced
# on the first site's device. Here the split is `cuda:0` + the CPU when a GPU is present; on a
# CPU-only machine both halves are on the CPU, which runs the same placement code.

# %%
first = "cuda:0" if torch.cuda.is_available() else "cpu"
half = len(model.blocks) // 2
split(model, {first: half, torch.device("cpu"): len(model.blocks) - half})
print("block devices:", sorted({str(d) for d in block_devices(model)}))
steerer = HookedSteerer(model).fit(source, target, progress=False, **fit_args)
print("map devices:", sorted({str(m.weight.device) for m in steerer.maps_.values()}))
print(steerer.generate(prompts[0], strength=1.0, max_new_tokens=12, return_type="continuation"))

# %% [markdown]
# ## Bounding the memory of a fit
# A fit's backward pass keeps every block's activations. Under `activation_checkpointing(model)`
# each block keeps only its input and recomputes the rest in the backward pass: about a third
# more time per step, much less memory (see `benchmarks/RESULTS_memory.md`), the same maps.

# %%
with activation_checkpointing(model):
    checkpointed = HookedSteerer(model).fit(source, target, progress=False, **fit_args)
gap = max(float((checkpointed.maps_[s].bias - m.bias).abs().max()) for s, m in steerer.maps_.items())
print(f"largest difference between the maps with and without checkpointing: {gap:.1e}")
