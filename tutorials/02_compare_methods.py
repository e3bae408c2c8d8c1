# %% [markdown]
# # Comparing LinEAS with its baselines, in sample and out of sample
#
# This tutorial fits six steering methods (LinEAS and five baselines) on the same prompt sets of
# SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised) and measures,
# for a sweep of strengths, what each does to the **toxicity** of the model's continuations and what
# it costs in **perplexity**:
#
# | method | what it fits | where it hooks | strength |
# |---|---|---|---|
# | `lineas` | affine map per site, end to end (global 1-D OT loss) | each block's `ln2.hook_out` (the paper's; the default sites) | λ |
# | `linear_act` | same maps, local closed-form 1-D OT, layer by layer (Rodriguez et al. 2024) | same | λ |
# | `mean_act` | shift b = mean(target) − mean(source), fitted site after site (Mean-AcT) | same | λ |
# | `caa` | the same shift, every site read from the unsteered model (CAA, Rimsky et al. 2024) | same | λ |
# | `iti` | top-K heads by probe accuracy, moved along the probe (ITI-c, Li et al. 2023) | `attn.hook_z` | λ α |
# | `actadd` | a matched prompt pair's per-position difference at the prompt's front (Turner et al. 2023) | one `hook_resid_pre` | λ c |
#
# The in-sample score continues the very prompts the methods were fitted on; the out-of-sample score
# continues held-out prompts that share no sentence with them. Continuations are sampled as in the
# paper (T = 1, top_p 0.3, repetition penalty 1.2, 32 tokens), several per prompt, with the same
# seeds for every method; every score has a 95% bootstrap interval over prompts. LinEAS's claim
# (arXiv 2503.10679) is that its end-to-end fit stays effective out of sample, at a low cost in
# fluency; on this small model our runs do not bear that out within the perplexity budgets
# (results/README.md). Every method is fitted with the library's defaults (LinEAS: a 10-step fit in
# quick mode only).
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

from lineas_tl.evaluate import PAPER, compare, format_frontier

QUICK = "--quick" in sys.argv or os.environ.get("LINEAS_TL_QUICK", "") not in ("", "0")
OUT = Path(os.environ.get("LINEAS_TL_OUT", "outputs")) / "02_compare_methods"

if QUICK:
    N_FIT, N_EVAL, N_IN, N_REF, REF_WORDS = 8, 6, 4, 4, 40
    STRENGTHS, EXTRA = (0.0, 0.5, 1.0), ()
    LINEAS = {"steps": 10}
    GENERATION = PAPER.with_(max_new_tokens=10, n_samples=1)
else:
    N_FIT, N_EVAL, N_IN, N_REF, REF_WORDS = 32, 32, 16, 32, 64  # 32 prompts per side: the paper's default
    STRENGTHS, EXTRA = tuple(i / 10 for i in range(11)), (1.5, 2.0)
    LINEAS = {}  # the library's default fit
    GENERATION = PAPER.with_(n_samples=2)
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
held_out_target = [p for p in concept.target_prompts if p not in set(target)][:N_EVAL]
reference = reference_text(n=N_REF, seed=0, max_words=REF_WORDS)
print("source:", source[:2])
print("target:", target[:2])
print("held out:", held_out[:2])

# %% [markdown]
# ## One call: fit every method once, sweep the strength
#
# Strength 0 (the unsteered model) is evaluated once and shared by every curve. Every method's
# strength runs over [0, 1]; the three whose fit is a distribution match (LinEAS, Linear-AcT,
# Mean-AcT) are also pushed past 1. The ceiling row is the unsteered model on *target* prompts.

# %%
start = time.perf_counter()
table = compare(
    model,
    source,
    target,
    methods=("lineas", "linear_act", "mean_act", "caa", "iti", "actadd"),
    strengths=STRENGTHS,
    extra_strengths=EXTRA,
    eval_prompts=held_out,
    target_eval_prompts=held_out_target,
    scorer=concept.lower_is_better(),  # compare ranks lower as better
    reference_texts=reference,
    method_kwargs={"lineas": LINEAS},
    generation=GENERATION,
    n_in_sample=N_IN,
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
cols = ["method", "strength", "score_in", "score_out", "score_out_lo", "score_out_hi", "pct_out", "gap"]
cols.append("perplexity")
print(table[cols].round(3).to_string(index=False))

# %% [markdown]
# ## The frontier summary
#
# For each method, the best held-out score among the strengths whose perplexity stays within +5%,
# +10% and +25% of the unsteered model's, with its 95% interval and strength: the comparison at
# equal fluency cost, which is the one that matters.

# %%
print(format_frontier(table.attrs["frontier"]).to_string(index=False))
ceiling = table.attrs["ceiling"]
print(f"ceiling (unsteered model on held-out target prompts): {ceiling['score_out']:.3f}")

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
full = table[table["strength"] == 1.0].set_index("method")
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
# The first held-out prompt's first sampled continuation at strength 1, per method.

# %%
print(f"prompt: {held_out[0]!r}")
print(f"  {'unsteered':>10}: {base['sample']!r}")
for name, row in full.iterrows():
    print(f"  {name:>10}: {row['sample']!r}")

# %% [markdown]
# ## Reading the result honestly
#
# - Strengths are not comparable across methods: λ = 1 means "full transport" for LinEAS and
#   Linear-AcT, "mean matched" for Mean-AcT and CAA, the full α for ITI and the chosen coefficient
#   for ActAdd. Compare curves at equal perplexity (the frontier summary), not rows at equal strength.
# - The judge is a bag-of-words profanity model, and SmolLM2-135M is small: absolute numbers differ
#   from the paper's Gemma2-2B figures (toxicity 4.00 % → 0.73 % with LinEAS at perplexity
#   14.8 → 15.5); the ranking, not the values, is what to look at.
# - With `--quick`, 8 prompts per side, 10 LinEAS steps and one sample per prompt are far from a
#   real measurement: the intervals say so.
