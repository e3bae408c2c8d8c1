"""How LinEAS's per-coordinate scale extrapolates with the strength (stop 38), at seed 0.

Refits stop 36's gated LinEAS at its own 13 heads (the paired draw's fit, control and head lists,
``HookedSteerer.fit`` directly rather than through ``compare``) and prints the distribution of omega
over the moved coordinates, and the share whose strength-scaled factor ``1 + lambda * (omega - 1)``
is negative (the coordinate flipped), below 0.5 or above 1.5. About 7 minutes on one CPU thread.

    python results/gate/omega_at_strength.py > results/gate/lineas_heads/omega_seed0.txt
"""
import json
import sys
from pathlib import Path
sys.path.insert(0, "results/gate")
import torch
torch.set_num_threads(1)
from run_gate_results import protocol
from lineas_tl import HookedSteerer, models
from lineas_tl.methods.iti import head_masks

model = models.load("smollm2-135m")
_, src, tgt, control, common = protocol("sentiment", False, 0, None, 48, 0, None, True)
heads = json.loads(Path("results/gate/lineas_heads/seed0/sentiment/protocol.json").read_text())["iti_heads"]
masks = head_masks(model, heads)
st = HookedSteerer(model, sites=list(masks)).fit(src, tgt, control=control, gate={"shared": True, "hard": True}, restrict=masks, progress=False, warn=False)
w = torch.cat([st.maps_[s].weight[m] for s, m in masks.items()]).flatten()
q = torch.quantile(w, torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95]))
print("moved coordinates", w.numel(), "omega quantiles 5/25/50/75/95%:", [round(float(x), 3) for x in q])
print("share omega < 1:", round(float((w < 1).float().mean()), 3))
for lam in (1, 1.5, 2, 3, 4, 6):
    eff = 1 + lam * (w - 1)
    print(f"strength {lam}: share of moved coordinates with 1+lambda(omega-1) < 0: {float((eff < 0).float().mean()):.3f}, < 0.5: {float((eff < 0.5).float().mean()):.3f}, > 1.5: {float((eff > 1.5).float().mean()):.3f}")
print("steps", st.history_["steps"], st.history_["stop_reason"])
