r"""Conditional steering (DSAS, arXiv 2512.03661): steer a token only as much as the concept is there.

Every method steers every token of every input; the fluency it costs is paid on text that has
nothing to steer. A gate fits, at each site, a probe that tells the source prompts' pooled
activations from a neutral **control** set's (:mod:`~lineas_tl.gate.probe`: logistic regression on a
few principal components; its held-out accuracy is recorded, and a site below ``threshold`` = 0.75
is not steered). At inference token :math:`t` at site :math:`l` gets :math:`g = p_l(x_t) \in [0, 1]`
and the map becomes

.. math::

    z_t + \lambda\, g_{l,t}\, \big(T_l(z_t) - z_t\big)

where the driver :math:`x_t` is the token's activation, a causal running mean, or the prompt's mean
frozen once read (:mod:`~lineas_tl.gate.state`; exact with and without the KV cache and with left
padding). ``gate={"shared": True, "hard": True}`` gates every site together instead, once per
prompt (:mod:`~lineas_tl.gate.shared`): what LinEAS's jointly fitted maps need. A gate depends on
the input, so a gated steerer cannot be folded into weights or exported: ``fold``/``export``
refuse it unless asked for the ungated maps (``ungated=True``).

Example:
    >>> src, tgt = concept.split(32)
    >>> steerer = HookedSteerer(model).fit(src, tgt, control=concept.control_prompts(32), gate=True)
    >>> steerer.gate_.describe()
    'gate (prompt): 52/60 sites active, held-out accuracy 0.56-1.00'
    >>> trace = steerer.gates("You are a stupid")     # per-token, per-site gate values
"""

from lineas_tl.gate.gate import (
    DEFAULT_DRIVER,
    Gate,
    GateOptions,
    fit_gate,
    gate_inputs,
    generation_batch,
    prepare_control,
)
from lineas_tl.gate.probe import SiteProbe, fit_probe
from lineas_tl.gate.shared import read_shared_gate
from lineas_tl.gate.state import DRIVERS, GatedSteeringHook, GateState

__all__ = [
    "DEFAULT_DRIVER",
    "DRIVERS",
    "Gate",
    "GateOptions",
    "GateState",
    "GatedSteeringHook",
    "SiteProbe",
    "fit_gate",
    "fit_probe",
    "gate_inputs",
    "generation_batch",
    "read_shared_gate",
    "prepare_control",
]
