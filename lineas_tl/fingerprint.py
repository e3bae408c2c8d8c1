"""A fingerprint of a model: its architecture (hook sites and parameter shapes) and its weights.

Saved with a steerer so loading it onto another model is caught: a different architecture is an
error, the same architecture with different weights a warning.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from lineas_tl.sites import canonical_names


def model_fingerprint(model: Any) -> dict[str, str]:
    """``{"architecture": sha, "weights": sha}`` of ``model`` (cheap: weights are subsampled)."""
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
            sample = torch.cat([flat[:256], flat[-256:], flat.float().sum().reshape(1)])
            weights.update(sample.float().cpu().numpy().tobytes())
    return {"architecture": arch.hexdigest()[:16], "weights": weights.hexdigest()[:16]}
