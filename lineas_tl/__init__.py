"""lineas-tl: LinEAS activation steering for TransformerLens and diffusers models.

Example:
    >>> from lineas_tl import HookedSteerer, get_concept, models
    >>> model = models.load("smollm2-135m")
    >>> source, target = get_concept("toxicity").split(n_fit=32, seed=0)
    >>> steerer = HookedSteerer(model).fit(source, target)
    >>> with steerer.hooks(strength=0.5):
    ...     logits = model(model.to_tokens("You are a"))

``models``, ``concepts``, ``get_concept`` and ``HookedPipeline`` are imported on first use, so that
``import lineas_tl`` stays light and diffusers stays optional.
"""

import importlib
from typing import Any

from lineas_tl.collect import collect_activations
from lineas_tl.losses import global_loss, prox_sparse_group_lasso, site_loss, wasserstein_1d_sq
from lineas_tl.maps import AffineMap
from lineas_tl.methods import METHODS
from lineas_tl.methods.convergence import NotConvergedWarning
from lineas_tl.sites import default_sites, resolve_sites
from lineas_tl.steerer import HookedSteerer
from lineas_tl.steerer_support import NotFittedError
from lineas_tl.validate import SteeringInputError
from lineas_tl.version import __version__


# name -> (module, attribute or None for the module itself), imported on first access
_LAZY = {
    "models": ("lineas_tl.models", None),
    "concepts": ("lineas_tl.concepts", None),
    "get_concept": ("lineas_tl.concepts", "get_concept"),
    "HookedPipeline": ("lineas_tl.diffusers", "HookedPipeline"),
    "HookedUNet": ("lineas_tl.diffusers", "HookedUNet"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'lineas_tl' has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = importlib.import_module(module)
    if attr is not None:
        value = getattr(value, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


# The lazy names that need optional extras (concepts, diffusers) stay out of ``import *``.
__all__ = [
    "METHODS",
    "AffineMap",
    "HookedSteerer",
    "NotConvergedWarning",
    "NotFittedError",
    "SteeringInputError",
    "collect_activations",
    "default_sites",
    "global_loss",
    "models",
    "prox_sparse_group_lasso",
    "resolve_sites",
    "site_loss",
    "wasserstein_1d_sq",
]
