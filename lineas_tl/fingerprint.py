"""A fingerprint of a model: its architecture (hook sites and parameter shapes) and its weights.

Saved with a steerer so loading it onto another model is caught: a different architecture is an
error, the same architecture with different weights a warning.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from lineas_tl.sites import canonical_names


WEIGHTS_SCHEME = 2
"""How ``"weights"`` is computed. 1 (format-3 steerers and earlier, no ``weights_scheme`` key) hashed
each tensor's float sum, whose rounding changes with the thread count and the device. 2 hashes a
strided sample of the values themselves, rounded to bfloat16, so a model loaded in float32 or
bfloat16 hashes the same."""
SAMPLES = 1024


def model_fingerprint(model: Any) -> dict[str, Any]:
    """``{"architecture": sha, "weights": sha, "weights_scheme": 2}`` of ``model`` (cheap: weights
    are subsampled, about 1,500 values per tensor)."""
    arch = hashlib.sha256()
    weights = hashlib.sha256()
    for name in canonical_names(model):
        arch.update(name.encode())
    with torch.no_grad():
        for name, p in sorted(model.state_dict().items()):
            if not isinstance(p, torch.Tensor) or not p.is_floating_point():
                continue
            arch.update(f"{name}:{tuple(p.shape)}".encode())
            flat = p.detach().reshape(-1)
            sample = torch.cat([flat[:256], flat[-256:], flat[:: max(1, flat.numel() // SAMPLES)]])
            weights.update(sample.to(torch.bfloat16).view(torch.int16).cpu().numpy().tobytes())
    return {"architecture": arch.hexdigest()[:16], "weights": weights.hexdigest()[:16], "weights_scheme": WEIGHTS_SCHEME}
