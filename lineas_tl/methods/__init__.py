"""Fitting methods, each a small module behind one interface (:mod:`lineas_tl.methods.base`).

=============  ===========================================================================
``lineas``     every site's affine map fitted end to end with the global OT loss (default)
``linear_act`` the same maps fitted locally, site after site, in closed form (1-D OT)
``mean_act``   Mean-AcT / CAA: a shift b = mean(target) - mean(source) per site
``actadd``     ActAdd: one prompt pair's activation difference at one residual layer
``iti``        ITI-c: top-k attention heads (``attn.hook_z``) shifted along a logistic probe
=============  ===========================================================================
"""

from lineas_tl.methods import actadd, iti, linear_act, lineas, mean_act  # noqa: F401  (registration)
from lineas_tl.methods.base import METHODS, FitContext, FitResult, register

__all__ = ["METHODS", "FitContext", "FitResult", "register"]
