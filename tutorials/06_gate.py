# %% [markdown]
# # Steer only where the concept is: the gate
#
# Every method steers every token of every input, and the fluency it costs is paid on text that
# has nothing to steer. A **gate** (DSAS, arXiv 2512.03661) fits, at each site, a probe that tells
# the source prompts from a neutral **control** set; each token's steering is scaled by the probe's
# probability, `z + strength * g * (T(z) - z)`, and sites whose probe is not accurate enough on
# held-out prompts (below 0.75) are not steered at all. LinEAS trains its maps and the gate
# together; the other methods get a gate after fitting.
#
# Run: `python tutorials/06_gate.py` (add `--quick` or `LINEAS_TL_QUICK=1` for a fast pass).

# %%
import os
import sys

import torch

from lineas_tl import HookedSteerer
from lineas_tl.concepts import get_concept
from lineas_tl.models import load

QUICK = "--quick" in sys.argv or os.environ.get("LINEAS_TL_QUICK") == "1"
N_FIT = 12 if QUICK else 32
torch.set_num_threads(1 if QUICK else torch.get_num_threads())

model = load("smollm2-135m")
concept = get_concept("toxicity")
source, target = concept.split(N_FIT, seed=0)
control = concept.control_prompts(N_FIT, seed=0)  # neutral news text, never evaluation or perplexity text

# %% [markdown]
# ## Fit a gated steerer
# `control=` gives the neutral prompts; `gate=True` fits the probes. With LinEAS the loss gains a
# term keeping the control prompts' activations where the unsteered model puts them, and the
# probes' weights train with the maps. The held-out accuracy of every site's probe is in
# `history_["gate"]`, and the summary is in the steerer's repr.

# %%
fit_args = {"steps": 3, "warn": False} if QUICK else {}
steerer = HookedSteerer(model).fit(source, target, control=control, gate=True, progress=not QUICK, **fit_args)
print(steerer)
accuracy = steerer.history_["gate"]["accuracy"]
print("lowest probe accuracies:", sorted(accuracy.items(), key=lambda kv: kv[1])[:3])

# %% [markdown]
# ## Which tokens were steered?
# `steerer.gates(text)` reads every site's gate on every token, with the steering on. Averaged
# over the active sites: a toxic prompt lights up, a neutral one stays dark. The default driver,
# `"prompt"`, gives every token the gate of the prompt's mean activation (the probe's training
# distribution); `gate={"driver": "token"}` or `"running"` gate token by token.

# %%
toxic, neutral = concept.eval_prompts[0], [p for p in concept.control_pool if p not in control][0]
traces = {}
for label, text in (("toxic", toxic), ("neutral", neutral)):
    for driver in ("prompt", "running", "token"):
        steerer.gate_.options.driver = driver
        traces[(label, driver)] = steerer.gates(text)
    steerer.gate_.options.driver = "prompt"
    trace = traces[(label, "token")]
    print(f"{label}: " + " ".join(f"{t!r}:{g:.2f}" for t, g in zip(trace.tokens, trace.mean().tolist())))

# %%
from matplotlib.figure import Figure  # noqa: E402

fig = Figure(figsize=(10, 5))
axes = fig.subplots(2, 1)
for ax, label in zip(axes, ("toxic", "neutral")):
    for driver in ("prompt", "running", "token"):
        trace = traces[(label, driver)]
        ax.plot(trace.mean().numpy(), marker="o", label=driver)
    ax.set_xticks(range(len(trace.tokens)), [t.replace("\n", "\\n") for t in trace.tokens], rotation=60, fontsize=7)
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("gate (mean over active sites)")
    ax.set_title(f"{label} prompt", fontsize=9)
    ax.legend(fontsize=7)
fig.tight_layout()
fig.savefig("gate_tokens.png", dpi=120)
print("wrote gate_tokens.png")

# %% [markdown]
# ## One gate for every site: `shared` and `hard`
# LinEAS fits its maps together, each for what the maps upstream of it produce, so a part of them
# is not a smaller version of the whole: a per-site gate that opens each site to its own probe's
# value can leave it with little effect. `gate={"shared": True, "hard": True}` decides once per
# prompt instead: the active probes vote on the unsteered prompt (one extra forward pass over it),
# and every site is steered fully (gate 1) or not at all (gate 0). Both are fitted in two stages,
# the maps as without a gate and the probes after them. `prompt_gate` reads the decision.

# %%
shared = HookedSteerer(model).fit(
    source, target, control=control, gate={"shared": True, "hard": True}, progress=not QUICK, **fit_args
)
print(shared)
print("prompt gates (toxic, neutral):", shared.prompt_gate([toxic, neutral]).tolist())
print(shared.generate([toxic, neutral], 1.0, max_new_tokens=6 if QUICK else 24, return_type="continuation"))

# %% [markdown]
# ## Generate, save, serve
# Generation is exact with and without the KV cache and with left padding, as for an ungated
# steerer. The gate saves with the steerer. A gate depends on the input, so `fold()` and `export()`
# refuse a gated steerer unless asked for the ungated maps (`ungated=True`).

# %%
print(steerer.generate([toxic, neutral], 1.0, max_new_tokens=6 if QUICK else 24, return_type="continuation"))
steerer.save("gated-detox")
print("loaded:", HookedSteerer.load("gated-detox", model))
try:
    steerer.fold()
except Exception as err:  # FoldError
    print("fold refused:", str(err)[:90], "...")
