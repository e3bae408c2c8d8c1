"""Fitting methods, each a small module behind one interface (:mod:`lineas_tl.methods.base`).

=============  ===========================================================================
``lineas``     every site's affine map fitted end to end with the global OT loss (default)
``linear_act`` the same maps fitted locally, site after site, in closed form (1-D OT)
=============  ===========================================================================
"""

from lineas_tl.methods import lineas, linear_act  # noqa: F401  (registration)
from lineas_tl.methods.base import METHODS, FitContext, FitResult, register

__all__ = ["METHODS", "FitContext", "FitResult", "register"]
