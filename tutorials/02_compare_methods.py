# %% [markdown]
# # Comparing LinEAS with its baselines, in sample and out of sample
#
# This tutorial fits five steering methods on the same prompt sets of SmolLM2-135M and measures,
# for a sweep of strengths, what each does to the **toxicity** of the model's continuations and what
# it costs in **perplexity**:
#
# | method | what it fits | where it hooks | strength |
# |---|---|---|---|
# | `lineas` | affine map per site, end to end (global 1-D OT loss) | each block's `hook_attn_out`, `hook_mlp_out` | λ |
# | `linear_act` | same maps, local closed-form 1-D OT, layer by layer (Rodriguez et al. 2024) | same | λ |
# | `mean_act` | shift b = mean(target) − mean(source) (Mean-AcT; CAA, Rimsky et al. 2024) | same | λ |
# | `iti` | top 48 heads by probe accuracy, moved 15 σ along the probe (ITI-c, Li et al. 2023) | `attn.hook_z` | λ α |
# | `actadd` | one prompt pair's mean residual difference (Turner et al. 2023) | `blocks.15.hook_resid_pre` | 5 λ |
#
# The in-sample score continues the very prompts the methods were fitted on; the out-of-sample score
# continues 80 held-out prompts that share no sentence with them. LinEAS's claim (arXiv
# 2503.10679) is that its end-to-end fit stays effective out of sample, at a low cost in fluency.
#
# Run it as a script (`python tutorials/02_compare_methods.py`), or with `--quick` (or
# `LINEAS_TL_QUICK=1`) for a one-to-two-minute run with few prompts, few steps and three strengths:
# quick mode checks that everything runs; its numbers are too noisy to rank the methods.

# %%
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pandas as pd

from lineas_tl.evaluate import compare

QUICK = "--quick" in sys.argv or os.environ.get("LINEAS_TL_QUICK", "") not in ("", "0")
OUT = Path(os.environ.get("LINEAS_TL_OUT", "outputs")) / "02_compare_methods"

if QUICK:
    N_FIT, N_EVAL, N_REF, REF_WORDS = 8, 8, 4, 40
    STRENGTHS = (0.0, 0.5, 1.0)
    LINEAS = {"steps": 10}
    MAX_NEW_TOKENS = 10
else:
    N_FIT, N_EVAL, N_REF, REF_WORDS = 32, 80, 64, 80  # 32 prompts per side: the paper's default
    STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
    LINEAS = {"steps": 200}  # the paper: 1000 steps; 100 are already competitive
    MAX_NEW_TOKENS = 30
print(f"quick={QUICK}: {N_FIT} fit prompts per side, {N_EVAL} held-out prompts, strengths {STRENGTHS}")

# %% [markdown]
# ## The model and the concept
#
# Both ship offline: the model as a GGUF file inside a wheel (converted and cached on first use),
# the toxicity prompts as templates, and the judge as `alt-profanity-check` (a calibrated linear
# model on words; cruder than the RoBERTa/Perspective judges of the paper).

# %%
try:
    from lineas_tl import models
    from lineas_tl.concepts import get_concept, reference_text

    model = models.load("smollm2-135m")
except (ImportError, FileNotFoundError, OSError) as err:
    print(f"SmolLM2-135M or the concept data is not available here ({err}); skipping this tutorial.")
    raise SystemExit(0) from None

concept = get_concept("toxicity")
source, target = concept.split(n_fit=N_FIT, seed=0)
held_out = concept.eval_prompts[:N_EVAL]
reference = reference_text(n=N_REF, seed=0, max_words=REF_WORDS)
print("source:", source[:2])
print("target:", target[:2])
print("held out:", held_out[:2])

# %% [markdown]
# ## One call: fit every method once, sweep the strength
#
# Strength 0 (the unsteered model) is evaluated once and shared by every curve. ActAdd's strength is
# an unbounded coefficient: `compare` passes 5 λ (`actadd_scale`, 5 as in Turner et al.'s
# "Love" − "Hate" example); the `scale` column shows what each method was steered with.

# %%
start = time.perf_counter()
table = compare(
    model,
    source,
    target,
    methods=("lineas", "linear_act", "mean_act", "iti", "actadd"),
    strengths=STRENGTHS,
    eval_prompts=held_out,
    scorer=concept.scorer,
    reference_texts=reference,
    method_kwargs={"lineas": LINEAS},
    max_new_tokens=MAX_NEW_TOKENS,
    out_dir=OUT,
)
print(f"compare took {time.perf_counter() - start:.0f}s; wrote {table.attrs['csv']} and {table.attrs['plot']}")

# %% [markdown]
# ## The table
#
# `score_*` is the mean toxicity probability of the continuations, `pct_*` the share of them judged
# toxic (> 0.5): the paper's "toxicity %". `rel_*` is the score relative to the unsteered model on
# the same prompts (1 = no effect, 0 = all toxicity removed), and `gap` = `rel_out` − `rel_in`: a
# positive gap means the method removes less toxicity on prompts it was not fitted on.

# %%
pd.set_option("display.width", 200)
cols = ["method", "strength", "scale", "score_in", "pct_in", "score_out", "pct_out", "rel_in", "rel_out", "gap"]
cols.append("perplexity")
print(table[cols].round(3).to_string(index=False))

# %% [markdown]
# ## The trade-off plot
#
# Concept score against perplexity, one curve per method, in sample (left) and out of sample
# (right). Down and to the left is better: less toxicity for less loss of fluency.

# %%
try:
    from IPython.display import Image, display

    display(Image(filename=table.attrs["plot"]))
except ImportError:
    print("plot:", table.attrs["plot"])

# %% [markdown]
# ## Robustness out of sample, at full strength
#
# The central claim, read from the same table: how much toxicity each method removes on the prompts
# it was fitted on, and on prompts it never saw, and at what perplexity.

# %%
base = table[table["strength"] == 0].iloc[0]
full = table[table["strength"] == max(STRENGTHS)].set_index("method")
summary = pd.DataFrame(
    {
        "removed in sample (%)": 100 * (1 - full["rel_in"]),
        "removed out of sample (%)": 100 * (1 - full["rel_out"]),
        "toxic % out of sample": full["pct_out"],
        "perplexity": full["perplexity"],
        "fit (s)": full["fit_seconds"],
    }
)
print(f"unsteered: in-sample score {base['score_in']:.3f}, out-of-sample {base['score_out']:.3f}, "
      f"toxic {base['pct_out']:.1f}% out of sample, perplexity {base['perplexity']:.2f}")
print(summary.round(2).to_string())

# %% [markdown]
# ## What the continuations look like
#
# The first held-out prompt's continuation at full strength, per method (greedy decoding).

# %%
print(f"prompt: {held_out[0]!r}")
print(f"  {'unsteered':>10}: {base['sample']!r}")
for name, row in full.iterrows():
    print(f"  {name:>10}: {row['sample']!r}")

# %% [markdown]
# ## Reading the result honestly
#
# - Strengths are not comparable across methods: λ = 1 means "full transport" for LinEAS and
#   Linear-AcT, "mean matched" for Mean-AcT, α = 15 standard deviations for ITI and a coefficient
#   of 5 for ActAdd. Compare curves at equal perplexity, not rows at equal strength.
# - The judge is a bag-of-words profanity model, and SmolLM2-135M is small: absolute numbers differ
#   from the paper's Gemma2-2B figures (toxicity 4.00 % → 0.73 % with LinEAS at perplexity
#   14.8 → 15.5); the ranking, not the values, is what to look at.
# - With `--quick`, 8 prompts per side and 20 LinEAS steps are far from the paper's 32 and 1000.
