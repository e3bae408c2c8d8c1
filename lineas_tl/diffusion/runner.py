"""The diffusion runner: prompts -> the UNet inputs a pipeline builds -> hooked UNet passes.

:meth:`DiffusionRunner.prepare` runs the pipeline once per batch of prompts with a forward pre-hook
on its UNet that records the UNet's inputs at the denoising steps to read (then stops the
pipeline, so later steps and the VAE decode are skipped). Whatever the pipeline does to build those
inputs (text encoders, CFG batching, SDXL's added conditioning, the scheduler's input scaling) is
therefore exactly what it does when generating. :meth:`DiffusionRunner.forward` replays the recorded
inputs through the UNet with hooks attached; with gradients on, that is the LinEAS fitting pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from lineas_tl.gate.state import begin_trajectory
from lineas_tl.hooks import GenerationPositions, PoolingRecorder
from lineas_tl.runner import Batch, Hook



class PipelineHost(Protocol):
    """What the runner reads of a :class:`~lineas_tl.diffusers.HookedPipeline` (a protocol, so the
    adapter, which builds the runner, and the runner do not import each other)."""

    pipe: Any
    unet: Any
    seed: int
    pool_steps: Any
    capture_batch_size: int

    call_kwargs: Callable[..., dict[str, Any]]
    hooks: Callable[..., Any]

# One UNet call: (positional args, keyword args), with per-prompt rows marked by ``_Row``.
Call = tuple[tuple[Any, ...], dict[str, Any]]


class _StopPipeline(Exception):
    """Raised from the UNet pre-hook once every step to read has been recorded."""


@dataclass(frozen=True)
class _Row:
    """One prompt's row ``[1, ...]`` of a tensor the pipeline batched over prompts."""

    tensor: Tensor


def _clone(obj: Any, memo: dict[int, tuple[Tensor, Tensor]]) -> Any:
    """Detached copies of every tensor in ``obj`` (a tensor shared between steps is copied once).

    ``memo`` maps ``id(original) -> (original, copy)``; holding the original keeps its id unique.
    """
    if isinstance(obj, Tensor):
        if id(obj) not in memo:
            memo[id(obj)] = (obj, obj.detach().clone())
        return memo[id(obj)][1]
    if isinstance(obj, dict):
        return {k: _clone(v, memo) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_clone(v, memo) for v in obj)
    return obj


def _split(obj: Any, row: int, batch: int) -> Any:
    """Row ``row`` of every tensor whose leading axis is the UNet batch; other values are shared."""
    if isinstance(obj, Tensor):
        return _Row(obj[row : row + 1]) if obj.ndim > 0 and obj.shape[0] == batch else obj
    if isinstance(obj, dict):
        return {k: _split(v, row, batch) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_split(v, row, batch) for v in obj)
    return obj


def _collate(items: Sequence[Any]) -> Any:
    """Stack per-prompt rows back into a batch (the inverse of :func:`_split`)."""
    first = items[0]
    if isinstance(first, _Row):
        return torch.cat([it.tensor for it in items])
    if isinstance(first, dict):
        return {k: _collate([it[k] for it in items]) for k in first}
    if isinstance(first, (list, tuple)):
        return type(first)(_collate([it[i] for it in items]) for i in range(len(first)))
    return first


def _prompt_list(prompts: Any) -> list[str]:
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, not a single string (wrap it in a list)")
    try:
        out = list(prompts)
    except TypeError:
        raise TypeError(f"prompts must be a list of strings, got {type(prompts).__name__}") from None
    if not out:
        raise ValueError("the prompt set is empty: pass at least one prompt")
    bad = [p for p in out if not isinstance(p, str)]
    if bad:
        raise TypeError(
            f"a diffusion pipeline takes text prompts (strings); got {type(bad[0]).__name__} "
            f"({len(bad)} of {len(out)} prompts)"
        )
    return out


@contextlib.contextmanager
def _quiet(pipe: Any) -> Iterator[None]:
    """Disable the pipeline's progress bar inside the block, restoring its config afterwards."""
    had = hasattr(pipe, "_progress_bar_config")
    old = dict(pipe._progress_bar_config) if had else None
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    try:
        yield
    finally:
        if had:
            pipe._progress_bar_config = old
        elif hasattr(pipe, "_progress_bar_config"):
            del pipe._progress_bar_config


class EncodedPrompts:
    """Prompts turned into recorded UNet inputs, ``items[prompt][step] = (args, kwargs)``.

    ``batch(indices)`` collates the chosen prompts into one UNet batch per step read; ``Batch.mask``
    is None (every spatial position or token of a UNet activation counts when pooling).
    """

    def __init__(self, prompts: list[str], items: list[list[Call]]):
        self.prompts = prompts
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    @property
    def n_steps(self) -> int:
        return len(self.items[0])

    def batch(self, indices: Sequence[int], padding_side: str = "right") -> Batch:
        """The UNet inputs of ``indices`` (``padding_side`` is ignored: there is no padding)."""
        idx = list(indices)
        if not idx:
            raise ValueError("cannot build an empty batch")
        steps = [_collate([self.items[i][s] for i in idx]) for s in range(self.n_steps)]
        return Batch(
            kwargs={"steps": steps},
            mask=None,
            size=len(idx),
            extra={"prompts": [self.prompts[i] for i in idx]},
        )


class DiffusionRunner:
    """The :class:`lineas_tl.runner.Runner` of a :class:`~lineas_tl.diffusers.HookedPipeline`.

    Activations it hands to hooks are the UNet's own: ``[batch, channels, height, width]`` for
    convolutional sites (features on axis 1), ``[batch, tokens, dim]`` for transformer-block
    norms (features on axis 2).
    """

    has_tokens = False
    """No token pooling mask: a gate counts every spatial position (and generation needs no prompt pass)."""

    def __init__(self, model: PipelineHost):
        self.model = model

    @property
    def pipe(self) -> Any:
        return self.model.pipe

    # ------------------------------------------------------------------ prompts -> UNet inputs
    def prepare(self, prompts: Any) -> EncodedPrompts:
        """Record, for every prompt, the UNet inputs of the steps to read (``model.pool_steps``).

        Prompt ``i`` is generated with seed ``model.seed + i``. Runs without gradient; call it with no
        steering active (as ``fit`` does) so that the latents of steps after the first are those of
        the unsteered trajectory (the inputs of step 0 never depend on steering).
        """
        prompts = _prompt_list(prompts)
        items: list[list[Call]] = []
        bs = self.model.capture_batch_size
        for start in range(0, len(prompts), bs):
            chunk = prompts[start : start + bs]
            seeds = [self.model.seed + start + i for i in range(len(chunk))]
            items += self._record(chunk, seeds)
        return EncodedPrompts(prompts, items)

    def _steps_to_read(self, calls: int) -> list[int]:
        steps = self.model.pool_steps
        if steps == "all":
            return list(range(calls))
        return [steps] if isinstance(steps, int) else list(steps)

    def _record(self, prompts: list[str], seeds: list[int]) -> list[list[Call]]:
        pool_steps = self.model.pool_steps
        needed = None if pool_steps == "all" else max(self._steps_to_read(0) or [0]) + 1
        calls: list[Call] = []
        memo: dict[int, tuple[Tensor, Tensor]] = {}

        def record(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            calls.append((_clone(tuple(args), memo), _clone(dict(kwargs), memo)))
            if needed is not None and len(calls) >= needed:
                raise _StopPipeline

        generators = [torch.Generator().manual_seed(s) for s in seeds]
        handle = self.model.unet.register_forward_pre_hook(record, with_kwargs=True)
        try:
            with _quiet(self.pipe), torch.no_grad():
                self.pipe(prompt=prompts, generator=generators, output_type="latent", **self.model.call_kwargs())
        except _StopPipeline:
            pass
        finally:
            handle.remove()
        if not calls:
            raise RuntimeError(f"{type(self.pipe).__name__} never called its UNet; cannot read activations")
        read = self._steps_to_read(len(calls))
        if max(read) >= len(calls):
            raise ValueError(
                f"pool_steps={pool_steps!r} but the pipeline ran only {len(calls)} UNet step(s); "
                "lower pool_steps or raise num_inference_steps"
            )
        n = len(prompts)
        per_prompt: list[list[Call]] = [[] for _ in range(n)]
        for s in read:
            args, kwargs = calls[s]
            sample = args[0] if args else kwargs.get("sample")
            if not isinstance(sample, Tensor):
                raise TypeError("could not find the UNet's `sample` tensor among the pipeline's call arguments")
            unet_batch = sample.shape[0]
            if unet_batch == n:
                offset = 0
            elif unet_batch == 2 * n:
                offset = n  # classifier-free guidance: [uncond, cond]; read the conditional half
            else:
                raise RuntimeError(
                    f"the UNet batch ({unet_batch}) is neither the number of prompts ({n}) nor twice "
                    "it (classifier-free guidance); num_images_per_prompt > 1 is not supported when fitting"
                )
            for i in range(n):
                per_prompt[i].append(_split((args, kwargs), offset + i, unet_batch))
        return per_prompt

    # ------------------------------------------------------------------ hooked UNet passes
    def forward(self, batch: Batch, hooks: list[Hook], sites: Sequence[str] | None = None) -> Any:
        """Run the UNet on each recorded step of ``batch`` with ``hooks`` attached.

        With several steps, every :class:`~lineas_tl.hooks.PoolingRecorder` among ``hooks`` ends
        with the mean over steps of what it pooled (gradients flow through every step). Returns the
        UNet output of the last step.
        """
        steps: list[Call] = batch.kwargs["steps"]
        recorders = [fn for _, fn in hooks if isinstance(fn, PoolingRecorder)]
        sums: dict[int, Tensor] = {}  # id(recorder) -> sum over steps of what it pooled
        out = None
        begin_trajectory(hooks)  # a gate is read at the first step, as in generation
        with self.model.hooks(fwd_hooks=hooks):
            for args, kwargs in steps:
                out = self.model.unet(*args, **kwargs)
                if len(steps) > 1:
                    for rec in recorders:
                        if rec.site in rec.store:
                            pooled = rec.store.pop(rec.site)
                            sums[id(rec)] = sums[id(rec)] + pooled if id(rec) in sums else pooled
        for rec in recorders:
            if id(rec) in sums:
                rec.store[rec.site] = sums[id(rec)] / len(steps)
        return out

    def features(self, site: str, act: Tensor) -> tuple[int, tuple[int, ...]]:
        """``(1, (channels,))`` for ``[b, c, h, w]`` and ``[b, d]``; ``(2, (dim,))`` for ``[b, n, dim]``."""
        if act.ndim in (2, 4):
            return 1, (int(act.shape[1]),)
        if act.ndim == 3:
            return 2, (int(act.shape[2]),)
        raise ValueError(f"unexpected activation of shape {tuple(act.shape)} at site {site!r}")

    # ------------------------------------------------------------------ images
    def generate(
        self,
        prompt: str | Sequence[str],
        make_hooks: Callable[[GenerationPositions | None], list[Hook]],
        *,
        seed: int = 0,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        height: int | None = None,
        width: int | None = None,
        output_type: str = "pil",
        **kwargs: Any,
    ) -> Any:
        """Run the pipeline with the hooks of ``make_hooks(None)`` attached at every step.

        Prompt ``i`` of a list uses a CPU generator seeded ``seed + i`` (image ``j`` of
        ``num_images_per_prompt=k`` uses ``seed + i*k + j``), so a single prompt with ``seed=s`` gives
        the image of ``pipe(prompt, generator=torch.Generator().manual_seed(s))``, on any device.
        Pass ``generator=`` to override. Other keyword arguments go to the pipeline.

        Returns:
            one image for a single prompt, else a list (``output_type="pil"``); with ``"np"`` or
            ``"pt"`` the pipeline's array, indexed the same way.
        """
        single = isinstance(prompt, str)
        prompts = [prompt] if single else _prompt_list(prompt)
        call = self.model.call_kwargs(num_inference_steps, guidance_scale, height, width)
        call.update(kwargs)
        if "generator" not in call:
            per_prompt = int(call.get("num_images_per_prompt") or 1)
            call["generator"] = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts) * per_prompt)]
        hooks = [h for h in make_hooks(None) if not getattr(h[1], "skips", False)]  # strength 0, gate off: none
        # a gated steerer's "prompt" gate: per image, read at the first denoising step (the step the
        # probes were fitted on), kept for the later steps; with CFG the conditional row's gate
        begin_trajectory(hooks, len(prompts) * int(call.get("num_images_per_prompt") or 1))
        with self.model.hooks(fwd_hooks=hooks):
            out = self.pipe(prompt=prompts, output_type=output_type, **call)
        images = out.images if hasattr(out, "images") else out[0]
        return images[0] if single and len(images) == 1 else images
