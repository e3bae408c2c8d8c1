"""``fit(method="lineas", compile=True)``: the full-batch step captured once as a CUDA graph, then replayed.

When every step feeds the whole source set and compares it with the whole target set, the inputs of
a LinEAS step are the same tensors every step; only the maps' values change, in place. The forward
pass with its hooks, the loss and the backward pass are then one fixed sequence of kernels: captured
once in a CUDA graph, each step replays it with no Python, no hook calls and no kernel launches of
its own. The optimiser, the schedule, the warm-up and the proximal step run eagerly between
replays (a few multi-tensor kernels; they update the maps in place, which the graph reads).

Same maps as the eager fit, to float tolerance: the captured step is the eager step with the
source rows in a fixed order instead of a fresh permutation each step (every row is in every step
either way; the sorted-W2 loss does not depend on the order of the rows, the arithmetic of a row
hardly does) and the target sorted once.

``torch.compile`` is no way around it here: TransformerLens 4's bridge breaks the graph in every
component (``object.__getattribute__(module, "__dict__")`` in the bridge components, attributes set
on weakref proxies such as ``_captured_pre_ln_residual``, ``bool(_needs.any())`` in
``TransformerBridge.forward``), and compiling a 2-layer model took five minutes on a CPU. The
last one is also a device sync that would stop a CUDA-graph capture; the runner avoids it by
handing right-padded batches their position ids (see :class:`~lineas_tl.runner.LanguageModelRunner`).

Where capture is impossible (no CUDA device, a minibatch, a gate or control term, activation
checkpointing, ``pooling="all"``, a POT or sliced loss) the fit warns and runs eagerly; on a CPU the
same fixed-order step runs eagerly (what the tests check). If capturing fails, the fit warns with
the reason and goes on eagerly.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lineas_tl.collect import pooled_forward
from lineas_tl.losses import Backend, site_losses
from lineas_tl.maps import AffineMap

WARMUP_STEPS = 3
"""Eager steps on a side stream before capture (as PyTorch's CUDA-graph recipe asks)."""


def why_not_captured(
    *, n_source: int, n_target: int, batch_size: int, pooling: str, backend: str, term: Any, checkpoint: bool,
    all_targets: bool = False, loss_on: str = "sites",
) -> str | None:  # fmt: skip
    """Why the step cannot be captured (None when it can)."""
    if batch_size != n_source or batch_size != n_target:
        return f"a captured step needs the full sets in every step (batch_size={batch_size}, {n_source} source, {n_target} target prompts)"
    if pooling == "all":
        return "pooling='all' varies the number of pooled rows"
    if backend not in ("auto", "sort"):
        return f"loss_backend={backend!r} (only the sorted W2 is captured)"
    if term is not None:
        return "a gate or control term is fitted alongside"
    if checkpoint:
        return "activation checkpointing recomputes hooks in the backward pass"
    if loss_on != "sites":
        return f"loss_on={loss_on!r} reads only some coordinates (only the whole sites' loss is captured)"
    del all_targets  # with batch_size == n_target every target row is compared either way
    return None


class CapturedStep:
    """Forward with the maps, sorted-W2 loss against the presorted target, backward: one call.

    Returns ``(loss, per_site_losses)`` (detached; on CUDA the graph's static outputs, valid until
    the next call) and leaves the gradients in each parameter's ``.grad``. The caller must not set
    the gradients to None between calls (the graph writes into them).
    """

    def __init__(
        self,
        runner: Any,
        batch: Any,
        sites: Sequence[str],
        pooling: str,
        maps: Mapping[str, AffineMap],
        target_sorted: Mapping[str, Tensor],
        backend: Backend,
        params: Sequence[Tensor],
    ):
        self.runner, self.batch, self.sites, self.pooling = runner, batch, list(sites), pooling
        self.maps, self.target, self.backend, self.params = maps, dict(target_sorted), backend, list(params)
        device = next(iter(target_sorted.values())).device
        self.cuda = device.type == "cuda" and torch.cuda.is_available()
        self.graph: Any = None
        self.failed: str | None = None
        self.calls = 0
        self._out: tuple[Tensor, Tensor] | None = None

    def _step(self) -> tuple[Tensor, Tensor]:
        pooled, _ = pooled_forward(self.runner, self.batch, self.sites, self.pooling, self.maps, detach=False)
        per_site = site_losses(pooled, self.target, self.backend, target_sorted=True)
        loss = per_site.mean()
        loss.backward()
        return loss.detach(), per_site.detach()

    def _eager(self) -> tuple[Tensor, Tensor]:
        for p in self.params:
            p.grad = None
        return self._step()

    def __call__(self) -> tuple[Tensor, Tensor]:
        self.calls += 1
        if not self.cuda or self.failed is not None:
            return self._eager()
        if self.graph is not None:
            self.graph.replay()
            assert self._out is not None
            return self._out
        if self.calls <= WARMUP_STEPS:  # warm-up (real steps) on a side stream, as the recipe asks
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                out = self._eager()
            torch.cuda.current_stream().wait_stream(side)
            return out
        return self._capture()

    def _capture(self) -> tuple[Tensor, Tensor]:
        torch.cuda.synchronize()
        for p in self.params:
            p.grad = None  # the backward in the graph allocates them in the graph's pool
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                out = self._step()
        except Exception as err:  # noqa: BLE001 (any capture failure: say why and go on eagerly)
            torch.cuda.synchronize()
            self.failed = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            warnings.warn(
                f"compile=True: capturing the LinEAS step as a CUDA graph failed ({self.failed}); "
                "the fit goes on eagerly",
                RuntimeWarning,
                stacklevel=3,
            )
            return self._eager()
        self.graph, self._out = graph, out
        graph.replay()  # capturing ran nothing: this step's values come from the first replay
        return out


def captured_step(
    ctx: Any,
    maps: Mapping[str, AffineMap],
    target: Mapping[str, Tensor],
    params: Sequence[Tensor],
    *,
    batch_size: int,
    backend: Backend,
    term: Any = None,
    checkpoint: bool = False,
    all_targets: bool = False,
    loss_on: str = "sites",
) -> CapturedStep | None:
    """The captured step of a LinEAS fit, or None (with a warning) where it cannot be captured."""
    reason = why_not_captured(
        n_source=len(ctx.source), n_target=len(ctx.target), batch_size=batch_size, pooling=ctx.pooling,
        backend=backend, term=term, checkpoint=checkpoint, all_targets=all_targets,
        loss_on=loss_on,
    )  # fmt: skip
    if reason is not None:
        warnings.warn(f"compile=True: {reason}; the fit runs eagerly", RuntimeWarning, stacklevel=3)
        return None
    presorted = {s: v.sort(dim=0).values for s, v in target.items()}
    batch = ctx.source.batch(list(range(len(ctx.source))))
    if next(iter(presorted.values())).device.type != "cuda":
        warnings.warn(
            "compile=True: CUDA graphs need a CUDA device; the full-batch step runs eagerly", RuntimeWarning, stacklevel=3
        )
    return CapturedStep(ctx.runner, batch, ctx.sites, ctx.pooling, maps, presorted, backend, params)
