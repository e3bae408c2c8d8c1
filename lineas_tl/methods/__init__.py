"""Fitting methods, each a small module behind one interface (:mod:`lineas_tl.methods.base`).

=============  ===========================================================================
``lineas``     every site's affine map fitted end to end with the global OT loss (default)
``linear_act`` the same maps fitted locally, site after site, in closed form (1-D OT), each
               applied only inside the source range seen at fit time (``support="q_0_100"``)
``mean_act``   Mean-AcT: a shift b = mean(target) - mean(source) per site, fitted site after
               site on activations already shifted upstream (AcT's incremental fit)
``caa``        the same shift with every mean read from the unsteered model (CAA's form)
``actadd``     ActAdd: a matched prompt pair's per-position difference, added at the prompt's
               first positions of one residual layer; layer and coefficient swept on the fit prompts
``iti``        ITI-c: top-K attention heads (``attn.hook_z``) shifted along a logistic probe,
               K = 4.7% of the model's heads (ITI's 48 of 1024)
=============  ===========================================================================
"""

from lineas_tl.methods import actadd, iti, linear_act, lineas, mean_act  # noqa: F401  (registration)
from lineas_tl.methods.base import METHODS, FitContext, FitResult, register

__all__ = ["METHODS", "FitContext", "FitResult", "register"]
