"""The diffusers side of lineas-tl.

- :mod:`lineas_tl.diffusion.adapter`: :class:`HookedUNet` / :class:`HookedPipeline`, TransformerLens
  hook points on a diffusers UNet (public path: :mod:`lineas_tl.diffusers`).
- :mod:`lineas_tl.diffusion.runner`: :class:`DiffusionRunner`, prompts -> UNet activations, images.
- :mod:`lineas_tl.diffusion.tiny`: tiny random pipelines built offline (tests, benchmarks).
- :mod:`lineas_tl.diffusion.digits`: a tiny text-to-image model trained on the CPU on coloured
  handwritten digits, with ground-truth judges (colour share, digit classifier).
"""
