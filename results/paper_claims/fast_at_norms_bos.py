"""Is the Mean-AcT warm start at ln2.hook_out costly because it steers the BOS token?

    OMP_NUM_THREADS=1 python results/paper_claims/fast_at_norms_bos.py

Perplexity of incremental Mean-AcT at the 30 ``ln2.hook_out`` sites with every position steered
and with the BOS position left alone, then the shifts' norms against the activations'. Results:
``docs/fitting.md``, "Diagnosis".
"""
import json, time, warnings
import torch
torch.set_num_threads(1)
warnings.simplefilter("ignore")
from lineas_tl import HookedSteerer, models
from lineas_tl.concepts import get_concept, reference_text
from lineas_tl.evaluate.perplexity import perplexity

model = models.load("smollm2-135m")
src, tgt = get_concept("toxicity").split(n_fit=16, seed=0)
ref = reference_text(n=16, seed=0, max_words=60)
base = perplexity(model, ref)
sites = [f"blocks.{i}.ln2.hook_out" for i in range(model.cfg.n_layers)]
for incremental in (True,):
    s = HookedSteerer(model, sites=sites).fit(src, tgt, method="mean_act", progress=False, sequential=incremental)
    for lam in (0.25, 1.0):
        def make(site, m, lam=lam):
            def fn(act, hook):
                out = act + lam * m.bias.to(act.dtype)
                out[:, 0] = act[:, 0]   # leave the BOS position alone
                return out
            return fn
        hooks = [(site, make(site, s.maps_[site])) for site in sites]
        with model.hooks(fwd_hooks=hooks):
            no_bos = perplexity(model, ref) / base
        allpos = perplexity(model, ref, steerer=s, strength=lam) / base
        print(json.dumps(dict(incremental=incremental, strength=lam, ppl_all_positions=round(allpos, 3), ppl_bos_untouched=round(no_bos, 3))), flush=True)
# how large is the shift against the spread of ln2 outputs at BOS vs other tokens
toks = model.to_tokens(ref[:4])
_, cache = model.run_with_cache(toks, names_filter=sites)
for site in sites[:4] + sites[-2:]:
    a = cache[site]
    b = s.maps_[site].bias
    print(site, "BOS |x|", round(float(a[:, 0].norm(dim=-1).mean()), 2), "tok |x|", round(float(a[:, 1:].norm(dim=-1).mean()), 2), "|b|", round(float(b.norm()), 3))
