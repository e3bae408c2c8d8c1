"""The diffusers adapter: steer a diffusers UNet pipeline with the same steerer as a language model.

Example:
    >>> from lineas_tl import HookedSteerer
    >>> from lineas_tl.diffusers import HookedPipeline
    >>> hooked = HookedPipeline(pipe, num_inference_steps=1, guidance_scale=0.0)   # e.g. SD-Turbo
    >>> steerer = HookedSteerer(hooked).fit(source_prompts, target_prompts, steps=100)
    >>> image = steerer.generate("a red car", strength=1.0, seed=0)            # a PIL image
    >>> image = steerer.generate("a car", strength=1.0, inverse=True, seed=0)   # induce instead

Sites default to every normalisation layer of the UNet (``unet.*norm*``, as in the LinEAS paper),
pooled by a spatial mean; block outputs are hook points too (``unet.down_blocks.0``, ...). See
:mod:`lineas_tl.diffusion.adapter` for how tuple outputs are hooked and
:class:`HookedPipeline` for timesteps, classifier-free guidance, dtype and device.
"""

from lineas_tl.diffusion.adapter import (
    HookedPipeline,
    HookedUNet,
    forward_order,
    is_norm,
)
from lineas_tl.diffusion.runner import DiffusionRunner, EncodedPrompts

__all__ = ["DiffusionRunner", "EncodedPrompts", "HookedPipeline", "HookedUNet", "forward_order", "is_norm"]
