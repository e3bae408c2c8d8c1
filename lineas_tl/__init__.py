"""lineas-tl: LinEAS activation steering for TransformerLens and diffusers models.

Example:
    >>> from lineas_tl import HookedSteerer
    >>> steerer = HookedSteerer(model).fit(source_prompts, target_prompts)
    >>> with steerer.steer(strength=1.0):
    ...     logits = model(tokens)
"""

from importlib.metadata import PackageNotFoundError, version

from lineas_tl.collect import collect_activations
from lineas_tl.losses import global_loss, prox_sparse_group_lasso, site_loss, wasserstein_1d_sq
from lineas_tl.maps import AffineMap
from lineas_tl.methods import METHODS
from lineas_tl.sites import default_sites, resolve_sites
from lineas_tl.steerer import HookedSteerer

try:
    __version__ = version("lineas-tl")
except PackageNotFoundError:  # running from a checkout that was not installed
    __version__ = "0.0.0+local"

__all__ = [
    "METHODS",
    "AffineMap",
    "HookedSteerer",
    "collect_activations",
    "default_sites",
    "global_loss",
    "prox_sparse_group_lasso",
    "resolve_sites",
    "site_loss",
    "wasserstein_1d_sq",
]
