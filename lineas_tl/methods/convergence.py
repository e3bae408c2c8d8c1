"""When an iterative fit is done: learning-rate schedules and a plateau rule on the loss.

A fit is done when its loss stops falling, not when a step count runs out. The rule is relative to
the progress made, so it depends neither on the loss's scale nor on where a warm start began: the
loss is on a *plateau* when, over the last ``patience`` steps, its best value fell, and the loss
itself moved, by at most ``tol`` times the total decrease so far, measured from the loss of the
identity maps (the untouched model). In words, with the defaults: the last 20 steps gained less than 0.03% of what the fit has
gained.

A fit with ``early_stop`` ends at the first plateau. A fixed schedule (``"cosine"``) runs all its
steps and counts as converged when a plateau came while the rate was still at least 1/8 of the
initial rate, so a loss frozen only by a decaying rate is not mistaken for a converged one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

RATE_FLOOR = 1 / 8
SCHEDULES = ("constant", "cosine")
DIVERGED = 100.0
"""A loss above this many times the larger of the identity maps' loss and the first step's means
the fit diverged (a runaway SGD step: ``paper_short`` off the paper's sites, or a heavy
``control_weight``); :func:`check_diverged` raises rather than return maps far worse than doing
nothing."""


class NotConvergedWarning(UserWarning):
    """A fit ended (its step budget ran out) while its loss was still falling."""


def check_diverged(losses: list[float], value: float, reference: float, step: int, lr: float, control_weight: float | None = None) -> None:
    """Raise :class:`FloatingPointError` when ``value`` (step ``step``'s loss, after ``losses``) is not
    finite or is over :data:`DIVERGED` times ``max(reference, losses[0])``, naming the fix."""
    first = losses[0] if losses else value
    if math.isfinite(value) and value <= DIVERGED * max(reference, first):
        return
    grew = f"grew from {first:.4g} to {value:.4g}" if math.isfinite(value) else f"became {value}"
    hint = "" if control_weight is None else f", or a smaller control_weight (now {control_weight:g})"
    raise FloatingPointError(
        f"the LinEAS fit diverged: its loss {grew} at step {step} (the identity maps' loss: {reference:.4g}); "
        f"lower lr (now {lr}) or use preset='authors_yaml' (Adam lr 1e-3){hint}"
    )


def make_schedule(opt: torch.optim.Optimizer, name: str, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """``"cosine"`` decays the rate to lr x 1e-3 over ``steps`` (the authors' setting);
    ``"constant"`` keeps it."""
    if name == "cosine":
        lr = opt.param_groups[0]["lr"]
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=lr * 1e-3)
    if name == "constant":
        return torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
    raise ValueError(f"unknown schedule {name!r}; choose one of {SCHEDULES}")


class Plateau:
    """Watches a loss curve; ``update(loss)`` says whether the loss is on a plateau now.

    Args:
        tol: the smallest gain over ``patience`` steps, as a share of the progress so far, that
            still counts as falling.
        patience: the window, in steps.
        reference: the loss progress is measured from (the identity maps'); default: the first
            loss seen.
    """

    def __init__(self, tol: float = 3e-4, patience: int = 20, reference: float | None = None):
        if tol <= 0 or patience < 1:
            raise ValueError("tol must be > 0 and patience >= 1")
        self.tol = tol
        self.patience = patience
        self.reference = reference
        self.best: list[float] = []
        self.seen: list[float] = []

    def update(self, loss: float) -> bool:
        if self.reference is None:
            self.reference = loss
        self.seen.append(loss)
        self.best.append(min(loss, self.best[-1]) if self.best else loss)
        if len(self.best) <= self.patience:
            return False
        # a loss that spiked (Adam's first steps after a warm start) and is still moving, up or back
        # down, is not on a plateau even while it has not beaten its best
        gain = max(self.best[-1 - self.patience] - self.best[-1], abs(self.seen[-1 - self.patience] - self.seen[-1]))
        return gain <= self.tol * max(self.reference - self.best[-1], 0.0)


def above_floor(opt: torch.optim.Optimizer, lr0: float) -> bool:
    """Whether the current rate is still at least 1/8 of the initial one."""
    return opt.param_groups[0]["lr"] >= lr0 * RATE_FLOOR * (1 - 1e-6)


def describe_fit(history: Mapping[str, Any]) -> str:
    """One line on an iterative fit: the loss from start to end, whether it converged, how far
    the maps moved. Empty for a closed-form method (no loss curve)."""
    if "final_loss" not in history:
        return ""
    state = "converged" if history.get("converged") else "NOT converged: the loss was still falling"
    if history.get("stop_reason") == "budget":
        state = f"stopped by the {history.get('preset')} preset's step budget, by design; the loss was still falling slowly"
    line = (
        f"loss {history['initial_loss']:.4g} -> {history['final_loss']:.4g} in {history['steps']} steps "
        f"({state}); maps moved max |omega-1| {history['max_abs_omega_minus_1']:.3g}, "
        f"max |b| {history['max_abs_b']:.3g}"
    )
    if history.get("warm_start_loss") is not None and history.get("init_used") == "identity":
        line += (
            f"; started from the identity: the warm start's loss {history['warm_start_loss']:.4g} was not "
            f"below the identity's {history['identity_loss']:.4g}"
        )
    return line


def describe_start(history: Mapping[str, Any]) -> str:
    """One line on where a LinEAS fit started and ended: steps, whether it converged and why it
    stopped, the identity maps' loss, the warm start's, which start was used, the final loss.
    Empty for a history without a loss curve."""
    if "steps" not in history:
        return ""
    state = "converged" if history["converged"] else "**did not converge**"
    if history.get("stop_reason") == "budget":
        state = "stopped by its preset's budget (by design)"
    warm = history.get("warm_start_loss")
    start = f"warm start {warm:.4g}, " if warm is not None else ""
    return (
        f"LinEAS fit: {history['steps']} steps, {state} (stop: {history['stop_reason']}); loss of the identity "
        f"maps {history['identity_loss']:.4g}, {start}started from {history.get('init_used', 'n/a')}, final "
        f"{history['final_loss']:.4g}."
    )
