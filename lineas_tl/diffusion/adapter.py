"""TransformerLens hook points on a diffusers UNet: :class:`HookedUNet` and :class:`HookedPipeline`.

Every chosen UNet submodule gets a ``HookPoint`` on its output, named after the module
(``unet.down_blocks.0.resnets.0.norm1``), so ``run_with_hooks``, ``hooks()``, ``run_with_cache``
and therefore :class:`lineas_tl.HookedSteerer` work unchanged.

How the hook points are attached: a plain torch forward hook on each chosen module routes the
module's output through its ``HookPoint``. Nothing in the UNet is replaced or renamed: its
``state_dict`` keys, parameters and attention processors are untouched, and
``HookedRootModule.setup()`` is never called (it would overwrite diffusers' ``Upsample2D.name``).
When a hook point has no hook attached, the router returns ``None`` and the module's output is
passed on as it was: an unsteered run is bit-identical to the bare UNet.

What a hook point sees, by module output:

* a tensor (norms, resnets, up blocks, the mid block): the tensor;
* a tuple (attention blocks, ``Transformer2DModel`` returns ``(sample,)``; ada-norms return
  ``(x, gates...)``): its first element, and the tuple is rebuilt around the hooked value;
* a down block's ``(hidden_states, residual_samples)``: ``hidden_states`` only, i.e. what flows to
  the next down block. The skip-connection copies in ``residual_samples`` (the last of which is the
  same tensor) are passed to the up blocks as they were: steer the norms inside the block, or the
  resnets/attentions, to change what the skip connections carry;
* a diffusers ``BaseOutput`` (``return_dict=True``): its first field.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, cast

import torch
from torch import Tensor, nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

if TYPE_CHECKING:
    from lineas_tl.diffusion.runner import DiffusionRunner

HookModules = str | Sequence[str] | Callable[[str], bool]
PoolSteps = int | Sequence[int] | Literal["all"]

#: a normalisation layer: the module's own name contains "norm" (``norm1``, ``norm``, ``conv_norm_out``)
NORM_RE = re.compile(r"(?:.*\.)?[^.]*norm[^.]*", re.IGNORECASE)
#: a UNet block or one of its resnets / attention (transformer) blocks
BLOCK_RE = re.compile(r"(?:down_blocks\.\d+|mid_block|up_blocks\.\d+)(?:\.(?:resnets|attentions)\.\d+)?")
PRESETS: dict[str, tuple[re.Pattern[str], ...]] = {
    "default": (NORM_RE, BLOCK_RE),
    "norms": (NORM_RE,),
    "blocks": (BLOCK_RE,),
}


def forward_order(module: nn.Module, prefix: str = "") -> list[str]:
    """Names of ``module``'s submodules in the order their outputs appear in a UNet forward pass.

    A post-order walk (a module's output comes after its children's) of the module tree, with the
    two places where diffusers' registration order differs from execution order fixed: a block's
    ``resnets`` and ``attentions`` interleave (``resnets.0, attentions.0, resnets.1, ...``, as in
    the down, up and mid blocks), and the UNet's ``mid_block`` runs between ``down_blocks`` and
    ``up_blocks``. ``tests/test_diffusers.py`` checks this order against a real forward pass.
    """
    out: list[str] = []
    for name, child in _ordered_children(module):
        full = f"{prefix}.{name}" if prefix else name
        out += forward_order(child, full)
        out.append(full)
    return out


def _ordered_children(module: nn.Module) -> list[tuple[str, nn.Module]]:
    children = list(module.named_children())
    names = [n for n, _ in children]
    if "mid_block" in names and "up_blocks" in names:
        mid = children.pop(names.index("mid_block"))
        children.insert([n for n, _ in children].index("up_blocks"), mid)
        names = [n for n, _ in children]
    if "resnets" in names and "attentions" in names:
        resnets = list(cast(nn.ModuleList, dict(children)["resnets"]))
        attentions = list(cast(nn.ModuleList, dict(children)["attentions"]))
        pairs: list[tuple[str, nn.Module]] = []
        for i in range(max(len(resnets), len(attentions))):
            pairs += [(f"resnets.{i}", resnets[i])] if i < len(resnets) else []
            pairs += [(f"attentions.{i}", attentions[i])] if i < len(attentions) else []
        at = min(names.index("resnets"), names.index("attentions"))
        rest = [(n, c) for n, c in children if n not in ("resnets", "attentions")]
        children = rest[:at] + pairs + rest[at:]
    return children


def is_norm(name: str) -> bool:
    """Whether a module name is a normalisation layer's (its last component contains ``norm``)."""
    return NORM_RE.fullmatch(name) is not None


def _module_filter(spec: HookModules, prefix: str) -> Callable[[str], bool]:
    """A predicate on UNet-relative module names from a preset, regex(es) or callable.

    A user's regex or callable may name modules with or without the ``prefix.``; presets never do.
    """
    if callable(spec):
        return lambda name: bool(spec(name) or spec(f"{prefix}.{name}"))
    specs = [spec] if isinstance(spec, str) else list(spec)
    presets: list[re.Pattern[str]] = []
    patterns: list[re.Pattern[str]] = []
    for s in specs:
        if s in PRESETS:
            presets += PRESETS[s]
        else:
            try:
                patterns.append(re.compile(s))
            except re.error as err:
                raise ValueError(
                    f"hook_modules {s!r} is neither a preset {sorted(PRESETS)} nor a valid regex: {err}"
                ) from None
    return lambda name: any(p.fullmatch(name) for p in presets) or any(
        p.fullmatch(name) or p.fullmatch(f"{prefix}.{name}") for p in patterns
    )


class _OutputRouter:
    """A torch forward hook that passes a module's output through a ``HookPoint``."""

    def __init__(self, hook_point: HookPoint):
        self.hook_point = hook_point

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        hp = self.hook_point
        if not (hp.fwd_hooks or hp.bwd_hooks):
            return None  # nothing attached: the output goes on untouched
        if isinstance(output, Tensor):
            return hp(output)
        if isinstance(output, tuple) and output and isinstance(output[0], Tensor):
            first = hp(output[0])
            if first is output[0]:
                return None
            rest = output[1:]
            return (first, *rest) if type(output) is tuple else type(output)(first, *rest)
        if isinstance(output, Mapping) and output:
            key = next(iter(output))
            if isinstance(output[key], Tensor):
                new = copy.copy(output)
                new[key] = hp(output[key])  # type: ignore[index]
                return new
        raise TypeError(
            f"cannot hook the output of {hp.name!r}: a {type(output).__name__} with no tensor first; "
            "choose another module (see HookedUNet(hook_modules=...))"
        )


class HookedUNet(HookedRootModule):
    """A ``HookedRootModule`` view of a diffusers ``UNet2DConditionModel``.

    Args:
        unet: the UNet. It is not copied and its weights are never modified; it keeps one forward
            hook per chosen module (a no-op while nothing is attached) until
            :meth:`remove_hook_points` is called. Several views of one UNet are independent (e.g.
            two :class:`HookedPipeline` with different ``pool_steps``); hooks attached through both
            apply in the order they were attached.
        hook_modules: which submodules get a hook point on their output: ``"default"`` (every
            normalisation layer and every down/mid/up block with their resnets and attention
            blocks), ``"norms"``, ``"blocks"``, a regex (full match on the module name, with or
            without the ``unet.`` prefix), a list of those, or a predicate on module names.
        prefix: the first component of every hook name.

    Hook names are ``f"{prefix}.{module_name}"``, in forward order; ``hook.name`` inside a hook
    function is the same string. ``forward(*args, **kwargs)`` is the UNet's own.

    Example:
        >>> hooked = HookedUNet(pipe.unet)
        >>> out, cache = hooked.run_with_cache(latents, t, encoder_hidden_states=emb,
        ...                                    names_filter=["unet.mid_block.resnets.0.norm1"])
    """

    def __init__(self, unet: nn.Module, hook_modules: HookModules = "default", *, prefix: str = "unet"):
        super().__init__()
        if not isinstance(unet, nn.Module):
            raise TypeError(f"expected a diffusers UNet (a torch.nn.Module), got {type(unet).__name__}")
        self.unet = unet
        self.prefix = prefix
        self.mod_dict: dict[str, nn.Module] = {}
        self.hook_dict: dict[str, HookPoint] = {}
        self._norms: list[str] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        keep = _module_filter(hook_modules, prefix)
        modules = dict(unet.named_modules())
        for rel in forward_order(unet):
            if not keep(rel):
                continue
            name = f"{prefix}.{rel}"
            hp = HookPoint()
            hp.name = name
            self.hook_dict[name] = hp
            self.mod_dict[name] = hp
            self._handles.append(modules[rel].register_forward_hook(_OutputRouter(hp)))
            if is_norm(rel):
                self._norms.append(name)
        if not self.hook_dict:
            raise ValueError(f"hook_modules={hook_modules!r} selected no module of the UNet")

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The UNet's forward pass (hooks attached with ``hooks()`` / ``run_with_hooks`` apply)."""
        return self.unet(*args, **kwargs)

    def default_steering_sites(self) -> list[str]:
        """Every normalisation layer's hook point (the LinEAS paper's UNet sites), else all of them."""
        return list(self._norms) if self._norms else list(self.hook_dict)

    def paper_steering_sites(self) -> list[str]:
        """Every normalisation layer's hook point: the LinEAS paper's text-to-image sites (``sites="paper"``)."""
        if not self._norms:
            raise ValueError(
                "this HookedUNet has no normalisation layer among its hook points, so it has no paper "
                "sites: build it with hook_modules='default' or 'norms'"
            )
        return list(self._norms)

    def remove_hook_points(self) -> None:
        """Detach the hook points from the UNet (restoring it exactly); this view is unusable after."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.hook_dict.clear()
        self.mod_dict.clear()
        self._norms.clear()

    def lineas_runner(self) -> DiffusionRunner:
        raise TypeError(
            "a bare UNet has no text encoder or scheduler, so it cannot turn prompts into activations: "
            "wrap the whole pipeline with lineas_tl.diffusers.HookedPipeline(pipe) to fit a steerer "
            "(HookedUNet still works with run_with_hooks / run_with_cache on UNet inputs)"
        )


class HookedPipeline(HookedUNet):
    """A diffusers pipeline whose UNet carries hook points; steerable from prompts.

    Fitting reads, for each prompt, the UNet's activations at the pipeline's own timestep(s): the
    prompt is encoded by the pipeline's text encoder(s), the latent is seeded (prompt ``i`` of a
    set uses seed ``seed + i``), and the UNet inputs are those the pipeline itself builds (so SD,
    SDXL with its added conditioning, turbo/lightning schedules all work). Each site is pooled by a
    spatial mean (token mean for transformer-block norms).

    Steps: ``pool_steps=k`` reads the UNet call of denoising step ``k`` (0 = the first, on pure
    noise, the default and the only one of single-step models); a list of steps or ``"all"``
    averages the pooled activation over those steps. The latents of steps after the first come
    from the *unsteered* trajectory (they are recorded once, before fitting). Generation steers
    every step. The pipeline is assumed to call its UNet once per step, as diffusers pipelines do.
    On the trained digits model (:mod:`lineas_tl.diffusion.digits`, 10 DDIM steps) step 0 removed
    the concept as well as ``"all"`` or ``[0, 3, 6]`` did, moved other prompts' images 3-5x less,
    and fitted 10x faster than ``"all"``.

    ``collect_activations(..., cache_dir=...)`` keys its disk cache on the weights, prompts, sites
    and pooling, not on ``pool_steps``, the schedule or ``seed``: give each setting its own
    ``cache_dir``.

    Classifier-free guidance: with ``guidance_scale > 1`` the UNet batch is ``[uncond, cond]``.
    Fitting reads the conditional half only (the unconditional half is the same for every prompt);
    in generation the maps steer both halves.

    Args:
        pipe: a diffusers pipeline with a ``unet`` (``StableDiffusionPipeline``,
            ``StableDiffusionXLPipeline``, or any pipeline that accepts ``prompt``, ``generator``
            and ``output_type`` and calls ``self.unet`` once per step).
        hook_modules: see :class:`HookedUNet`.
        pool_steps: the denoising step(s) read when fitting: an int, a list of ints, or ``"all"``.
        num_inference_steps, guidance_scale, height, width: the schedule used both for fitting and,
            unless overridden per call, for generation (``None``: the pipeline's own defaults).
            Single-step models: ``num_inference_steps=1, guidance_scale=0.0``.
        seed: seed of the first prompt's latent when fitting.
        capture_batch_size: prompts per pipeline call while recording UNet inputs.
        pipeline_kwargs: further keyword arguments for every pipeline call (e.g. ``negative_prompt``).

    The pipeline's dtype and device are used as they are (fp16 on CUDA included): the recorded
    inputs live where the pipeline puts them, and steering maps cast themselves to the activation.

    Example:
        >>> hooked = HookedPipeline(pipe, num_inference_steps=1, guidance_scale=0.0)
        >>> steerer = HookedSteerer(hooked).fit(source_prompts, target_prompts, steps=100)
        >>> image = steerer.generate("a photo of a dog", strength=1.0, seed=0)
    """

    def __init__(
        self,
        pipe: Any,
        hook_modules: HookModules = "default",
        *,
        pool_steps: PoolSteps = 0,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        height: int | None = None,
        width: int | None = None,
        seed: int = 0,
        capture_batch_size: int = 16,
        pipeline_kwargs: Mapping[str, Any] | None = None,
    ):
        unet = getattr(pipe, "unet", None)
        if not isinstance(unet, nn.Module):
            raise TypeError(
                f"{type(pipe).__name__} has no `unet`; HookedPipeline wraps UNet pipelines "
                "(StableDiffusionPipeline, StableDiffusionXLPipeline, ...)"
            )
        super().__init__(unet, hook_modules)
        self.pipe = pipe
        for name, component in getattr(pipe, "components", {}).items():
            if isinstance(component, nn.Module) and component is not unet and not hasattr(self, name):
                self.add_module(name, component)  # so parameters(), eval() and state_dict() see them
        self.pool_steps = _check_pool_steps(pool_steps)
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.height = height
        self.width = width
        self.seed = int(seed)
        if capture_batch_size < 1:
            raise ValueError("capture_batch_size must be at least 1")
        self.capture_batch_size = capture_batch_size
        self.pipeline_kwargs = dict(pipeline_kwargs or {})

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The pipeline's own call (with any attached hooks active at every denoising step).

        ``run_with_cache`` on a pipeline keeps, per site, the activation of the *last* UNet call.
        """
        return self.pipe(*args, **kwargs)

    def call_kwargs(
        self,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        height: int | None = None,
        width: int | None = None,
    ) -> dict[str, Any]:
        """Keyword arguments of a pipeline call: the given values, else this wrapper's defaults."""
        values = {
            "num_inference_steps": num_inference_steps if num_inference_steps is not None else self.num_inference_steps,
            "guidance_scale": guidance_scale if guidance_scale is not None else self.guidance_scale,
            "height": height if height is not None else self.height,
            "width": width if width is not None else self.width,
        }
        return {**self.pipeline_kwargs, **{k: v for k, v in values.items() if v is not None}}

    def lineas_runner(self) -> DiffusionRunner:  # type: ignore[override]
        """The runner that turns prompts into UNet activations and generates images."""
        from lineas_tl.diffusion.runner import DiffusionRunner

        return DiffusionRunner(self)


def _check_pool_steps(pool_steps: PoolSteps) -> PoolSteps:
    if pool_steps == "all":
        return "all"
    if isinstance(pool_steps, int) and not isinstance(pool_steps, bool):
        if pool_steps < 0:
            raise ValueError("pool_steps must be >= 0 (0 is the first denoising step)")
        return pool_steps
    if isinstance(pool_steps, Sequence) and not isinstance(pool_steps, str):
        steps = [int(s) for s in pool_steps]
        if not steps or min(steps) < 0:
            raise ValueError("pool_steps must be a non-empty list of step indices >= 0")
        return sorted(set(steps))
    raise ValueError(f"pool_steps must be an int, a list of ints or 'all', got {pool_steps!r}")
