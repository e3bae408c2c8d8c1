r"""LinEAS: every site's affine map fitted together, end to end, with one distributional loss.

Rodriguez et al., *LinEAS: End-to-end Learning of Activation Steering with a Distributional Loss*
(arXiv 2503.10679). With every map :math:`T_l(z) = \omega_l \odot z + b_l` active, the source
prompts' pooled outputs :math:`U_l` depend on all upstream maps; the loss

.. math::

    \mathcal{L} = \frac{1}{L} \sum_{l=1}^{L} \sum_{j} W_2^2\big((U_l)_{:,j}, (V_l)_{:,j}\big)

against the untouched model's target activations :math:`V_l` therefore trains each map knowing its
effect downstream. After each Adam step, a sparse-group-lasso proximal step on
:math:`(\omega_l - 1, b_l)` with :math:`\tau = \text{lr}_t\,\gamma` selects the neurons and sites.

Presets (every argument stays overridable; the table and sources are in
:mod:`lineas_tl.methods.lineas_presets` and ``docs/fitting.md``):

- ``preset="auto"`` (the default) picks by site: at pre-sublayer norm outputs of a language model
  (the paper's sites, the default sites of a pre-LN model) ``"paper_short"``, the paper's SGD recipe
  below stopped at 300 steps; anywhere else ``"fast"``. Chosen on held-out prompts in
  ``results/preset_screen/`` (issue 18).
- ``preset="fast"`` minimises the same loss from a better start and in better units:
  it starts from the incremental mean match (omega = 1, each site's shift matched to the target mean
  on activations already shifted upstream: Mean-AcT), and measures the shift in units of the
  target's standard deviation, :math:`b_l = \sigma_l \odot \beta_l`. Adam moves each parameter by
  about ``lr`` per step whatever its gradient's scale, so in raw units a coordinate whose activations
  span hundreds (SmolLM2's massive activations) needs thousands of steps while one that spans 0.1
  overshoots; in standardised units every coordinate moves at the same relative pace. It runs Adam
  at a constant ``lr=1e-2`` and stops when the loss has stopped falling (the rule is in
  :mod:`lineas_tl.methods.convergence`), after at most ``steps=300``.
- ``preset="paper"``: the paper's recipe for the model's modality. A language model gets
  ``"paper_language"``: SGD lr 0.1, cosine decay, 1000 steps from the identity, every target prompt
  in every step, gamma 0, no early stop (the paper's text and the authors' README toxicity
  command). A diffusers UNet gets ``"paper_unet"``: AdamW lr 1e-4, batch 4, 1000 steps (the paper's
  text-to-image setting). Pair it with ``HookedSteerer(model, sites="paper")``, the paper's sites
  (:func:`lineas_tl.sites.paper_sites`): ``blocks.N.ln2.hook_out`` in a pre-LN model (GPT-2, Llama,
  SmolLM2), ``blocks.N.ln1_post.hook_out`` and ``blocks.N.ln2_post.hook_out`` in Gemma-2/3, every
  normalisation layer in a UNet.
- ``preset="authors_yaml"``: the authors' repository yaml default, used by their diffusion example:
  raw parametrisation, Adam lr 1e-3 with betas (0.9, 0.9), cosine decay to lr x 1e-3 over 1000
  steps, no early stop (what ``preset="paper"`` ran before issue 18).
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torch.nn.utils import parametrize
from tqdm.auto import tqdm

from lineas_tl.collect import pooled_forward
from lineas_tl.losses import Backend, site_losses
from lineas_tl.maps import AffineMap, support_by_site
from lineas_tl.methods.base import FitContext, FitResult, register
from lineas_tl.methods.control import control_term
from lineas_tl.methods.convergence import NotConvergedWarning, Plateau, above_floor, check_diverged, make_schedule
from lineas_tl.methods.lineas_loss import coordinate_reader, loss_of, presort_targets
from lineas_tl.methods.lineas_params import _prox, _standardize, group_norms, make_optimizer, project, resolve_restrict
from lineas_tl.methods.lineas_presets import BUDGET_BY_DESIGN, PRESETS, check_hparams, resolve_preset, warn_off_paper_sites
from lineas_tl.sites import is_pre_norm_site
from lineas_tl.validate import MIN_DISTRIBUTION_PROMPTS, check_prompts

__all__ = ["PRESETS", "fit_lineas"]


@register("lineas")
def fit_lineas(
    ctx: FitContext,
    *,
    preset: str = "auto",
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
    optimizer: str | None = None,
    gamma: float = 0.0,
    l1: float = 1.0,
    group: float = 1.0,
    group_by: str = "site",
    restrict: Mapping[str, Tensor] | None = None,
    loss_on: str = "sites",
    transform: str = "affine",
    loss_backend: Backend = "auto",
    checkpoint: bool = False,
    seed: int = 0,
    log_every: int = 10,
    warn: bool = True,
    compile: bool = False,
) -> FitResult:
    """Fit LinEAS maps on every site of ``ctx``.

    Args:
        preset: ``"auto"`` (default: ``"paper_short"`` at pre-sublayer norm outputs of a language
            model, else ``"fast"``), ``"fast"``, ``"paper"`` (the paper's recipe for the model's
            modality: ``"paper_language"`` for a language model, ``"paper_unet"`` for a diffusers
            pipeline), ``"paper_short"``, ``"paper_language"``, ``"paper_unet"`` or
            ``"authors_yaml"`` (the repository's yaml default, Adam lr 1e-3). It sets every argument
            below that is left at None:

            ============== ======== =========== ========== ========== ===============
            argument       fast     paper_short paper_lang paper_unet authors_yaml
            ============== ======== =========== ========== ========== ===============
            optimizer      adam     sgd         sgd        adamw      adam
            lr             1e-2     0.1         0.1        1e-4       1e-3
            schedule       constant cosine      cosine     cosine     cosine
            steps          300      300         1000       1000       1000
            batch_size     <=32     <=32        <=32       4          <=32
            init           mean_act identity    identity   identity   identity
            standardize    True     False       False      False      False
            early_stop     True     False       False      False      False
            ============== ======== =========== ========== ========== ===============

            The paper presets and ``authors_yaml`` compare each step's source batch with every
            target prompt; ``fast`` draws as many targets as sources. Sources in
            :mod:`lineas_tl.methods.lineas_presets`. The paper's recipes assume the paper's sites,
            ``HookedSteerer(model, sites="paper")`` (``ln2`` outputs in pre-LN models, both post
            norms in Gemma-2/3, every norm in a UNet); ``fit`` warns otherwise.
        steps: the most optimisation steps (>= 1).
        lr: learning rate (> 0; fast: in standardised units).
        schedule: ``"constant"`` or ``"cosine"`` (decay to lr x 1e-3 over ``steps``).
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
            4x the identity's). At pre-sublayer norm outputs (``sites="paper"`` in a pre-LN model;
            :func:`lineas_tl.sites.is_pre_norm_site`) the fast preset starts from the identity
            unless ``init`` is passed (``history_["init_reason"]``): its mean-match start cost x4.7
            perplexity at strength 1 there (``docs/fitting.md``).
        warmup: steps of linear learning-rate warm-up (0: none); the plateau rule starts after it.
        tol, patience: the loss has stopped falling when its best value over the last ``patience``
            steps improved by less than ``tol`` times the total decrease so far (see
            :mod:`lineas_tl.methods.convergence`).
        batch_size: source (and target) prompts per step; default ``min(32, n_source, n_target)``.
        optimizer: ``"adam"`` (betas 0.9, 0.9, as the authors), ``"sgd"`` (the paper's language
            recipe, lr 0.1) or ``"adamw"`` (betas 0.9, 0.9, weight decay 0.01; the paper's UNets).
        gamma: sparsity strength of the proximal step (>= 0; 0 turns it off); with ``standardize``
            the penalty applies to the standardised shift.
        l1, group: relative weights of the L1 and the group (per-site L2) penalties.
        group_by: the group lasso's groups: ``"site"`` (the paper's: each site's scale, and its
            shift) or ``"head"`` (each head's, at sites of features ``(n_heads, d_head)`` such as
            ``attn.hook_z``); ``history_["group_norms"]`` holds each group's final norm, per head.
        restrict: ``{site: mask}``, boolean masks of the coordinates each map may move (the site's
            feature shape, e.g. ``(n_heads, d_head)``); the map stays the identity elsewhere (a warm
            start is reset there and every step is projected back). Other sites are not restricted.
            :func:`lineas_tl.methods.iti.head_masks` builds masks from ITI-c's selected heads.
        loss_on: which coordinates the transport loss compares: ``"sites"`` (the paper's: every
            coordinate of every site) or ``"restricted"`` (at a site with a ``restrict`` mask only the
            masked coordinates; not the paper's, see :mod:`lineas_tl.methods.lineas_loss`).
        transform: what each map learns: ``"affine"`` (the paper's ``omega * z + b``) or ``"shift"``
            (``kind="shift"`` maps, omega held at 1, ``z + b``: the translation ITI-c and Mean-AcT move; not the
            paper's). Starts from ``init="identity"`` or ``"mean_act"``.
        loss_backend: ``"auto"`` (sort when counts match, else POT), ``"sort"``, ``"pot"``, ``"sliced"``.
        checkpoint: recompute each block's activations in the backward pass instead of storing them
            (less memory, about one more forward pass of time); see :mod:`lineas_tl.checkpointing`.
        seed: seeds the minibatch sampling; the fit is deterministic for a seed.
        log_every: support is recorded every ``log_every`` steps.
        warn: emit :class:`NotConvergedWarning` when the loss is still falling at the end (not at paper_short's own budget).
        compile: capture the full-batch step (forward, loss, backward) once as a CUDA graph and replay
            it every step (see :mod:`lineas_tl.capture`; same maps to float tolerance). Needs every
            prompt in every step and no gate or control term; otherwise, or on a CPU, warns and runs eagerly.

    Returns:
        the maps, and a history with ``preset`` (the resolved name: ``"auto"`` becomes
        ``"paper_short"`` or ``"fast"``, ``"paper"`` ``"paper_language"`` or ``"paper_unet"``), ``config`` (every preset setting used), ``loss``, ``lr`` and ``time`` (seconds since the fit started,
        target statistics and initialisation included) per step, ``identity_loss`` (the untouched
        model's), ``warm_start_loss`` (of ``init``'s maps; None from the identity), ``init_used``,
        ``initial_loss`` (at the first step),
        ``final_loss``, ``steps``, ``converged``, ``stop_reason``, ``max_abs_omega_minus_1``,
        ``max_abs_b``, ``seconds``, ``site_loss`` (last step), ``support`` and ``support_trace``.

    Raises:
        SteeringInputError: a hyper-parameter out of range (``lr <= 0``, ``steps < 1``, ``tol <= 0``,
            ``patience < 1``, ``gamma < 0``, a NaN or infinite value) or fewer than
            :data:`~lineas_tl.validate.MIN_DISTRIBUTION_PROMPTS` source or target prompts.
    """
    name, cfg = resolve_preset(preset, ctx.runner, ctx.sites)
    given = {
        "steps": steps, "lr": lr, "schedule": schedule, "standardize": standardize, "early_stop": early_stop, "init": init,
        "warmup": warmup, "optimizer": optimizer, "batch_size": batch_size,
    }  # fmt: skip
    cfg.update({k: v for k, v in given.items() if v is not None})
    check_hparams(cfg, tol=tol, patience=patience, gamma=gamma, l1=l1, group=group, log_every=log_every, group_by=group_by, loss_on=loss_on, transform=transform)
    check_prompts(ctx.source, "source", minimum=MIN_DISTRIBUTION_PROMPTS, method="LinEAS")
    check_prompts(ctx.target, "target", minimum=MIN_DISTRIBUTION_PROMPTS, method="LinEAS")
    n_s, n_t = len(ctx.source), len(ctx.target)
    bs = cfg["batch_size"] if cfg["batch_size"] is not None else min(32, n_s, n_t)
    if bs > n_s or (bs > n_t and not cfg["all_targets"]):
        raise ValueError(
            f"batch_size={bs} is larger than the prompt sets ({n_s} source, {n_t} target); pass "
            f"batch_size <= {min(n_s, n_t)} or give more prompts"
        )
    warn_off_paper_sites(name, ctx.model, ctx.sites)
    init_reason = None
    if name == "fast" and init is None and cfg["init"] != "identity" and any(map(is_pre_norm_site, ctx.sites)):
        # measured on SmolLM2 at ln2.hook_out (docs/fitting.md): the incremental mean match shifts
        # each sublayer's normalised input by 13-22% of a token's norm and keeps the fit in a basin
        # costing x4.7 perplexity at strength 1; from the identity it reaches a loss 15% higher at x1.3
        cfg["init"], init_reason = "identity", "pre-sublayer norm sites: the fast preset starts from the identity there"
    started = time.perf_counter()
    maps, start, warm_loss = _initial_maps(ctx, cfg["init"], transform), cfg["init"], None
    read = coordinate_reader(masks := resolve_restrict(ctx.model, maps, restrict), loss_on)
    target = read(pooled_target := ctx.pooled("target"))
    reference = loss_of(ctx, target, bs, loss_backend, read, all_targets=cfg["all_targets"])  # of the identity maps: the untouched model
    if start != "identity":
        warm_loss = loss_of(ctx, target, bs, loss_backend, read, maps, cfg["all_targets"])
        if not warm_loss < reference:  # a warm start worse than doing nothing (seen on style) is no start
            maps, start = ctx.identity_maps(transform), "identity"
    if cfg["standardize"]:
        _standardize(maps, pooled_target, cfg["standardize"])  # every coordinate's scale
    project(maps, masks)
    params = [p for m in maps.values() for p in m.parameters() if p.requires_grad]
    term = control_term(ctx, maps, bs, seed)  # fit(control=..., gate=...): see methods/control.py
    params += term.params if term is not None else []
    opt = make_optimizer(cfg["optimizer"], params, cfg["lr"])
    sched = make_schedule(opt, cfg["schedule"], cfg["steps"])
    plateau = Plateau(tol, patience, reference=reference)
    converged = False
    gen = torch.Generator().manual_seed(seed)
    history: dict[str, Any] = {"loss": [], "lr": [], "time": [], "support_trace": [], "preset": name, "config": dict(cfg)}
    history.update(identity_loss=reference, warm_start_loss=warm_loss, init_used=start, init_reason=init_reason)
    stop_reason = "steps"
    last_sites: tuple[list[str], Tensor] | None = None  # the last step's per-site losses
    presorted: dict[str, Tensor] | None = None
    best: tuple[float, list[Tensor]] = (float("inf"), [])
    # the best iterate is only well defined for a full-batch loss without a penalty (the prox step
    # trades loss for sparsity; a minibatch loss is noisy)
    keep_best = cfg["early_stop"] and gamma == 0 and bs == n_s == n_t
    captured = None
    if compile:  # see lineas_tl.capture: None (and a warning) where the step cannot be captured
        from lineas_tl.capture import captured_step

        captured = captured_step(ctx, maps, target, params, batch_size=bs, backend=loss_backend, term=term,
                                 checkpoint=checkpoint, all_targets=cfg["all_targets"], loss_on=loss_on)  # fmt: skip
    bar = tqdm(range(cfg["steps"]), desc="LinEAS", disable=not ctx.progress)
    with _checkpointing(ctx.model, checkpoint):
        for step in bar:
            idx_s = torch.randperm(n_s, generator=gen)[:bs].tolist()
            idx_t = torch.randperm(n_t, generator=gen)[: min(bs, n_t)]
            if captured is not None:  # compile=True: forward, loss and backward in one replayed graph
                loss, site_vals = captured()
                source = dict.fromkeys(ctx.sites)
            elif term is not None:
                source = read(term.source(idx_s)[0])
            else:
                source = read(pooled_forward(ctx.runner, ctx.source.batch(idx_s), ctx.sites, ctx.pooling, maps, detach=False)[0])
            full = ctx.pooling == "all" or cfg["all_targets"]
            if presorted is None:
                presorted = presort_targets(target, bs, n_t, full, loss_backend)  # sorted once, not every step
            if captured is not None:
                pass
            elif presorted:  # every target row each step: the sorted-W2 loss does not see their order
                site_vals = site_losses(source, presorted, loss_backend, target_sorted=True)
            else:
                tgt = target if full else {s: v[idx_t.to(v.device)] for s, v in target.items()}
                site_vals = site_losses(source, tgt, loss_backend)
            last_sites = (list(source), site_vals)
            loss = site_vals.mean() if captured is None else loss
            loss = loss + term.loss() if term is not None else loss
            value = float(loss.detach())  # the one device sync of a step: the plateau rule reads it
            check_diverged(history["loss"], value, reference, step, cfg["lr"], term.weight if term is not None else None)
            if keep_best and value < best[0]:
                saved = best[1] or [torch.empty_like(p) for p in params]
                torch._foreach_copy_(saved, [p.detach() for p in params])
                best = (value, saved)
            if captured is None:  # (the captured step wrote the gradients already)
                opt.zero_grad(set_to_none=True)
                loss.backward()
            if step < cfg["warmup"]:  # a linear warm-up: Adam's first steps move every parameter by ~lr
                for param_group in opt.param_groups:
                    param_group["lr"] = cfg["lr"] * (step + 1) / cfg["warmup"]
            opt.step()
            lr_now = opt.param_groups[0]["lr"]
            sched.step()
            if gamma > 0:
                _prox(maps, lr_now * gamma * l1, lr_now * gamma * group, by_head=group_by == "head")
            project(maps, masks)
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
    history["group_norms"] = group_norms(maps, by_head=group_by == "head")
    for m in maps.values():
        for name in ("bias", "weight"):
            if parametrize.is_parametrized(m, name):
                parametrize.remove_parametrizations(m, name, leave_parametrized=True)
        m.requires_grad_(False)
    per_site = dict(zip(last_sites[0], last_sites[1].detach().tolist())) if last_sites else {}
    history.update(_summary(maps, history["loss"], per_site, converged, stop_reason, time.perf_counter() - started))
    history.update(term.finish() if term is not None else {})
    if best[1]:
        history["final_loss"] = best[0]
    if not converged and history["preset"] in BUDGET_BY_DESIGN and steps is None and stop_reason == "steps":
        history["stop_reason"] = "budget"  # the preset's own budget is its regulariser: no warning
    elif warn and not converged:
        warnings.warn(
            f"LinEAS stopped after {len(history['loss'])} steps while its loss was still falling "
            f"({history['initial_loss']:.4g} -> {history['final_loss']:.4g}); fit again with more steps "
            "(steps=...) or a larger lr, or check history_['loss']",
            NotConvergedWarning,
            stacklevel=4,
        )
    return FitResult(maps, history)


INITS = ("identity", "mean_act", "linear_act")


def _initial_maps(ctx: FitContext, init: str, kind: str = "affine") -> dict[str, AffineMap]:
    """The maps (of map ``kind``: ``"shift"`` holds omega at 1) the optimiser starts from.

    ``"identity"`` (the paper's); ``"mean_act"``: omega = 1 and each site's shift matched to the
    target mean on activations already shifted upstream (incremental Mean-AcT); ``"linear_act"``: the
    sequential closed-form 1-D OT solution without a support range.
    """
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {INITS}")
    maps = ctx.identity_maps(kind)
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
