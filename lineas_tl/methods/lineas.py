r"""LinEAS: every site's affine map fitted together, end to end, with one distributional loss.

Rodriguez et al., *LinEAS: End-to-end Learning of Activation Steering with a Distributional Loss*
(arXiv 2503.10679). With every map :math:`T_l(z) = \omega_l \odot z + b_l` active, the source
prompts' pooled outputs :math:`U_l` depend on all upstream maps; the loss

.. math::

    \mathcal{L} = \frac{1}{L} \sum_{l=1}^{L} \sum_{j} W_2^2\big((U_l)_{:,j}, (V_l)_{:,j}\big)

against the untouched model's target activations :math:`V_l` therefore trains each map knowing its
effect downstream. After each Adam step, a sparse-group-lasso proximal step on
:math:`(\omega_l - 1, b_l)` with :math:`\tau = \text{lr}_t\,\gamma` selects the neurons and sites.

Two presets (every argument stays overridable):

- ``preset="fast"`` (the default) minimises the same loss from a better start and in better units:
  it starts from the incremental mean match (omega = 1, each site's shift matched to the target mean
  on activations already shifted upstream: Mean-AcT), and measures the shift in units of the
  target's standard deviation, :math:`b_l = \sigma_l \odot \beta_l`. Adam moves each parameter by
  about ``lr`` per step whatever its gradient's scale, so in raw units a coordinate whose activations
  span hundreds (SmolLM2's massive activations) needs thousands of steps while one that spans 0.1
  overshoots; in standardised units every coordinate moves at the same relative pace. It runs Adam
  at a constant ``lr=1e-2`` and stops when the loss has stopped falling (the rule is in
  :mod:`lineas_tl.methods.convergence`), after at most ``steps=300``.
- ``preset="paper"``: the authors' recipe, raw parametrisation, Adam lr 1e-3 with betas (0.9, 0.9),
  cosine decay to lr x 1e-3 over 1000 steps, no early stop.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from tqdm.auto import tqdm

from lineas_tl.collect import pooled_forward
from lineas_tl.losses import Backend, global_loss, prox_sparse_group_lasso
from lineas_tl.maps import AffineMap, support_by_site
from lineas_tl.methods.base import FitContext, FitResult, register
from lineas_tl.methods.convergence import NotConvergedWarning, Plateau, above_floor, make_schedule

PRESETS: dict[str, dict[str, Any]] = {
    "fast": {"steps": 300, "lr": 1e-2, "schedule": "constant", "standardize": True, "early_stop": True, "init": "mean_act", "warmup": 0},
    "paper": {"steps": 1000, "lr": 1e-3, "schedule": "cosine", "standardize": False, "early_stop": False, "init": "identity", "warmup": 0},
}


class _Scaled(nn.Module):
    """``b = scale * beta``: the optimiser sees ``beta``, the map still holds ``b``."""

    def __init__(self, scale: Tensor):
        super().__init__()
        self.register_buffer("scale", scale)

    def forward(self, beta: Tensor) -> Tensor:
        return beta * self.scale

    def right_inverse(self, b: Tensor) -> Tensor:
        return b / self.scale


class _Offset(nn.Module):
    """``omega = 1 + scale * alpha``: the optimiser sees ``alpha``, the map still holds ``omega``."""

    def __init__(self, scale: Tensor):
        super().__init__()
        self.register_buffer("scale", scale)

    def forward(self, alpha: Tensor) -> Tensor:
        return 1 + alpha * self.scale

    def right_inverse(self, omega: Tensor) -> Tensor:
        return (omega - 1) / self.scale


@register("lineas")
def fit_lineas(
    ctx: FitContext,
    *,
    preset: str = "fast",
    steps: int | None = None,
    lr: float | None = None,
    schedule: str | None = None,
    standardize: bool | None = None,
    early_stop: bool | None = None,
    init: str | None = None,
    warmup: int | None = None,
    tol: float = 3e-4,
    patience: int = 20,
    batch_size: int | None = None,
    optimizer: str = "adam",
    gamma: float = 0.0,
    l1: float = 1.0,
    group: float = 1.0,
    loss_backend: Backend = "auto",
    checkpoint: bool = False,
    seed: int = 0,
    log_every: int = 10,
    warn: bool = True,
) -> FitResult:
    """Fit LinEAS maps on every site of ``ctx``.

    Args:
        preset: ``"fast"`` (default) or ``"paper"``; sets the next five arguments where they are None.
        steps: the most optimisation steps (fast: 300, stops earlier once converged; paper: 1000).
        lr: learning rate (fast: 1e-2 in standardised units; paper: 1e-3).
        schedule: ``"constant"`` (fast) or ``"cosine"`` (paper: decay to lr x 1e-3 over ``steps``).
        standardize: measure the shift in units of the target's per-coordinate standard deviation
            (``True``); ``"both"`` also measures omega's deviation so that a unit step moves the
            output by about one target std (``omega = 1 + (sigma / rms) alpha``).
        early_stop: stop once the loss has stopped falling (otherwise run all ``steps``); with the
            full prompt sets in every step and ``gamma=0``, return the maps of the lowest loss seen
            (``history_["final_loss"]`` is that loss).
        init: where the maps start: ``"mean_act"`` (fast), ``"identity"`` (paper) or
            ``"linear_act"`` (the closed-form local solution, without a support range). A warm
            start whose loss is not below the identity maps' is dropped for the identity
            (``history_["init_used"]``; on SmolLM2's style prompts incremental Mean-AcT's loss is
            4x the identity's).
        warmup: steps of linear learning-rate warm-up (0: none); the plateau rule starts after it.
        tol, patience: the loss has stopped falling when its best value over the last ``patience``
            steps improved by less than ``tol`` times the total decrease so far (see
            :mod:`lineas_tl.methods.convergence`).
        batch_size: source (and target) prompts per step; default ``min(32, n_source, n_target)``.
        optimizer: ``"adam"`` (betas 0.9, 0.9, as the authors) or ``"sgd"`` (the paper's lr 0.1).
        gamma: sparsity strength of the proximal step (0 turns it off); with ``standardize`` the
            penalty applies to the standardised shift.
        l1, group: relative weights of the L1 and the group (per-site L2) penalties.
        loss_backend: ``"auto"`` (sort when counts match, else POT), ``"sort"``, ``"pot"``, ``"sliced"``.
        checkpoint: recompute each block's activations in the backward pass instead of storing them
            (less memory, about one more forward pass of time); see :mod:`lineas_tl.checkpointing`.
        seed: seeds the minibatch sampling; the fit is deterministic for a seed.
        log_every: support is recorded every ``log_every`` steps.
        warn: emit :class:`NotConvergedWarning` when the fit ends while the loss is still falling.

    Returns:
        the maps, and a history with ``loss``, ``lr`` and ``time`` (seconds since the fit started,
        target statistics and initialisation included) per step, ``identity_loss`` (the untouched
        model's), ``warm_start_loss`` (of ``init``'s maps; None from the identity), ``init_used``,
        ``initial_loss`` (at the first step),
        ``final_loss``, ``steps``, ``converged``, ``stop_reason``, ``max_abs_omega_minus_1``,
        ``max_abs_b``, ``seconds``, ``site_loss`` (last step), ``support`` and ``support_trace``.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    cfg = dict(PRESETS[preset])
    given = {
        "steps": steps, "lr": lr, "schedule": schedule, "standardize": standardize, "early_stop": early_stop, "init": init,
        "warmup": warmup,
    }
    cfg.update({k: v for k, v in given.items() if v is not None})
    n_s, n_t = len(ctx.source), len(ctx.target)
    bs = batch_size if batch_size is not None else min(32, n_s, n_t)
    if bs > n_s or bs > n_t:
        raise ValueError(
            f"batch_size={bs} is larger than the prompt sets ({n_s} source, {n_t} target); pass "
            f"batch_size <= {min(n_s, n_t)} or give more prompts"
        )
    if cfg["steps"] < 1:
        raise ValueError("steps must be at least 1")
    started = time.perf_counter()
    target = ctx.pooled("target")
    reference = _loss_of(ctx, target, bs, loss_backend)  # of the identity maps: the untouched model
    maps, start, warm_loss = _initial_maps(ctx, cfg["init"]), cfg["init"], None
    if start != "identity":
        warm_loss = _loss_of(ctx, target, bs, loss_backend, maps)
        if not warm_loss < reference:  # a warm start worse than doing nothing (seen on style) is no start
            maps, start = ctx.identity_maps("affine"), "identity"
    if cfg["standardize"]:
        _standardize(maps, target, cfg["standardize"])
    params = [p for m in maps.values() for p in m.parameters() if p.requires_grad]
    opt = _optimizer(optimizer, params, cfg["lr"])
    sched = make_schedule(opt, cfg["schedule"], cfg["steps"])
    plateau = Plateau(tol, patience, reference=reference)
    converged = False
    gen = torch.Generator().manual_seed(seed)
    history: dict[str, Any] = {"loss": [], "lr": [], "time": [], "support_trace": [], "preset": preset, "config": dict(cfg)}
    history.update(identity_loss=reference, warm_start_loss=warm_loss, init_used=start)
    stop_reason = "steps"
    per_site: dict[str, float] = {}
    best: tuple[float, list[Tensor]] = (float("inf"), [])
    # the best iterate is only well defined for a full-batch loss without a penalty (the prox step
    # trades loss for sparsity; a minibatch loss is noisy)
    keep_best = cfg["early_stop"] and gamma == 0 and bs == n_s == n_t
    bar = tqdm(range(cfg["steps"]), desc="LinEAS", disable=not ctx.progress)
    with _checkpointing(ctx.model, checkpoint):
        for step in bar:
            idx_s = torch.randperm(n_s, generator=gen)[:bs].tolist()
            idx_t = torch.randperm(n_t, generator=gen)[:bs]
            source, _ = pooled_forward(ctx.runner, ctx.source.batch(idx_s), ctx.sites, ctx.pooling, maps, detach=False)
            tgt = target if ctx.pooling == "all" else {s: v[idx_t.to(v.device)] for s, v in target.items()}
            loss, per_site = global_loss(source, tgt, loss_backend)
            value = float(loss.detach())
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"the LinEAS loss became {value} at step {step}; lower lr (now {cfg['lr']}) or use preset='paper'"
                )
            if keep_best and value < best[0]:
                best = (value, [p.detach().clone() for p in params])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if step < cfg["warmup"]:  # a linear warm-up: Adam's first steps move every parameter by ~lr
                for param_group in opt.param_groups:
                    param_group["lr"] = cfg["lr"] * (step + 1) / cfg["warmup"]
            opt.step()
            lr_now = opt.param_groups[0]["lr"]
            sched.step()
            if gamma > 0:
                _prox(maps, lr_now * gamma * l1, lr_now * gamma * group)
            history["loss"].append(value)
            history["lr"].append(lr_now)
            history["time"].append(time.perf_counter() - started)
            if step % log_every == 0 or step == cfg["steps"] - 1:
                support = support_by_site(maps)
                history["support_trace"].append(sum(support.values()) / len(support))
            bar.set_postfix(loss=f"{value:.4g}")
            if step >= cfg["warmup"] and plateau.update(value) and above_floor(opt, cfg["lr"]):
                converged = True
                if cfg["early_stop"]:
                    stop_reason = "converged"
                    break
    if best[1]:  # early stopping returns the maps of the lowest loss seen, not the last step's
        with torch.no_grad():
            for p, saved in zip(params, best[1]):
                p.copy_(saved)
    for m in maps.values():
        for name in ("bias", "weight"):
            if parametrize.is_parametrized(m, name):
                parametrize.remove_parametrizations(m, name, leave_parametrized=True)
        m.requires_grad_(False)
    history.update(_summary(maps, history["loss"], per_site, converged, stop_reason, time.perf_counter() - started))
    if best[1]:
        history["final_loss"] = best[0]
    if warn and not converged:
        warnings.warn(
            f"LinEAS stopped after {len(history['loss'])} steps while its loss was still falling "
            f"({history['initial_loss']:.4g} -> {history['final_loss']:.4g}); fit again with more steps "
            "(steps=...) or a larger lr, or check history_['loss']",
            NotConvergedWarning,
            stacklevel=4,
        )
    return FitResult(maps, history)


INITS = ("identity", "mean_act", "linear_act")


def _initial_maps(ctx: FitContext, init: str) -> dict[str, AffineMap]:
    """The maps the optimiser starts from.

    ``"identity"`` (the paper's); ``"mean_act"``: omega = 1 and each site's shift matched to the
    target mean on activations already shifted upstream (incremental Mean-AcT); ``"linear_act"``: the
    sequential closed-form 1-D OT solution without a support range.
    """
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {INITS}")
    maps = ctx.identity_maps("affine")
    if init == "identity":
        return maps
    from lineas_tl.methods.linear_act import fit_linear_act
    from lineas_tl.methods.mean_act import fit_mean_act

    local = (fit_mean_act(ctx) if init == "mean_act" else fit_linear_act(ctx, support=None)).maps
    with torch.no_grad():
        for site, m in maps.items():
            m.weight.copy_(local[site].weight)
            m.bias.copy_(local[site].bias)
    return maps


def _standardize(maps: dict[str, AffineMap], target: dict[str, Tensor], how: Any) -> None:
    """Reparametrise each map so that a unit step moves its output by about one target std.

    ``b = sigma * beta``; with ``how == "both"`` also ``omega = 1 + (sigma / rms) * alpha``, since a
    change of omega moves ``z`` by ``delta * |z|``, about ``delta * rms`` (rms: the target's
    root-mean-square value).
    """
    for site, m in maps.items():
        v = target[site]
        std = v.std(dim=0) if v.shape[0] > 1 else torch.ones_like(v[0])
        std = std.clamp_min(1e-3 * float(std.max().clamp_min(1e-12)))
        parametrize.register_parametrization(m, "bias", _Scaled(std.reshape(m.feature_shape).to(m.bias.device)))
        if how == "both":
            rms = v.pow(2).mean(dim=0).sqrt().clamp_min(1e-12)
            ratio = (std / rms).clamp(1e-3, 1.0).reshape(m.feature_shape).to(m.weight.device)
            parametrize.register_parametrization(m, "weight", _Offset(ratio))


def _loss_of(
    ctx: FitContext, target: dict[str, Tensor], bs: int, backend: Backend, maps: dict[str, AffineMap] | None = None
) -> float:
    """The loss of ``maps`` (None: the identity, i.e. the untouched model) on the first ``bs`` prompts of each set."""
    with torch.no_grad():
        batch = ctx.source.batch(list(range(bs)))
        source, _ = pooled_forward(ctx.runner, batch, ctx.sites, ctx.pooling, maps)
        tgt = target if ctx.pooling == "all" else {s: v[:bs] for s, v in target.items()}
        return float(global_loss(source, tgt, backend)[0])


def _optimizer(name: str, params: list[Tensor], lr: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.9))
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; choose 'adam' or 'sgd'")


def _checkpointing(model: Any, on: bool) -> Any:
    if not on:
        return contextlib.nullcontext()
    from lineas_tl.checkpointing import activation_checkpointing

    return activation_checkpointing(model)


def _summary(
    maps: dict[str, AffineMap], losses: list[float], per_site: dict[str, float], converged: bool, reason: str, seconds: float
) -> dict[str, Any]:
    return {
        "initial_loss": losses[0],
        "final_loss": losses[-1],
        "steps": len(losses),
        "converged": bool(converged),
        "stop_reason": reason,
        "max_abs_omega_minus_1": max(float((m.weight - 1).abs().max()) for m in maps.values()),
        "max_abs_b": max(float(m.bias.abs().max()) for m in maps.values()),
        "seconds": seconds,
        "site_loss": per_site,
        "support": support_by_site(maps),
    }


def _prox(maps: dict[str, AffineMap], tau_l1: float, tau_group: float) -> None:
    """Sparse-group-lasso proximal step on each map's deviation from the identity.

    With a standardised map the step applies to the optimised parameters (the deviations in target
    standard deviations), so the penalty does not favour low-variance coordinates.
    """
    with torch.no_grad():
        for m in maps.values():
            for name in ("weight", "bias"):
                if parametrize.is_parametrized(m, name):
                    prox_sparse_group_lasso(getattr(m.parametrizations, name).original, tau_l1, tau_group)
                elif name == "weight":
                    delta = m.weight - 1
                    prox_sparse_group_lasso(delta, tau_l1, tau_group)
                    m.weight.copy_(delta + 1)
                else:
                    prox_sparse_group_lasso(m.bias, tau_l1, tau_group)
