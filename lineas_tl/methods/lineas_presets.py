"""LinEAS's named recipes (``fit(..., preset=...)``) and how ``"paper"`` picks one by modality.

A preset fills every fitting argument the caller left at None; anything passed explicitly wins.

- ``"auto"`` (the library's default) picks by where the maps sit: ``"paper_short"`` for a language
  model whose sites are all pre-sublayer norm outputs (the paper's sites, ``sites="paper"``, the
  default sites of a pre-LN model), ``"fast"`` anywhere else (attention/MLP outputs, Gemma's post
  norms, a UNet). Chosen on held-out prompts (``results/preset_screen/``, issue 18).
- ``"paper_short"``: the paper's language recipe stopped at 300 steps, the cosine decay spread over
  those 300. On SmolLM2 at ``ln2.hook_out`` it steers as far within a perplexity budget as the
  1000-step recipe at a third of the cost (``results/preset_screen/SEEDS.md``). Its loss is still
  falling slowly when the budget ends; that budget is the point (stopping early is what keeps the
  maps general), so it does not warn: ``history_["stop_reason"]`` says ``"budget"``. A ``steps=``
  passed explicitly is the caller's budget, and ends with a warning as any other.
- ``"fast"``: Adam at a constant lr 1e-2 in standardised units, from the incremental mean match,
  stopping once the loss has stopped falling (at most 300 steps). Our own recipe, the default before
  issue 18 and still the default away from norm outputs; see :mod:`lineas_tl.methods.lineas` and
  ``docs/fitting.md``.
- ``"paper"``: the paper's recipe for the model's modality, resolved by :func:`resolve_preset`:

  - ``"paper_language"`` for a language model: SGD at lr 0.1, cosine decay, 1000 steps, from the
    identity, every target prompt in every step, gamma 0, no early stop. Sources: the paper's text
    (arXiv 2503.10679, language experiments) and the authors' README command for toxicity, which
    overrides the repository's yaml optimiser with SGD lr 0.1 (``docs/fitting.md`` quotes both).
  - ``"paper_unet"`` for a diffusion UNet (a :class:`~lineas_tl.diffusers.HookedPipeline`): the
    paper's text-to-image recipe, AdamW at lr 1e-4 (the paper's text; the authors' README uses
    1e-5), batch 4 source prompts, 1000 steps, from the identity, every target prompt per step.
    Not stated there, so kept from the repository's yaml: cosine decay to lr x 1e-3 and betas
    (0.9, 0.9); AdamW's weight decay is torch's default (0.01).

- ``"authors_yaml"``: the authors' repository yaml default, the optimiser their diffusion example
  runs: Adam lr 1e-3, betas (0.9, 0.9), cosine decay to lr x 1e-3 over 1000 steps, from the
  identity, no early stop. Before issue 18 this was what ``preset="paper"`` ran.

The paper places the maps at its own sites too: pair ``preset="paper"`` with
``HookedSteerer(model, sites="paper")`` (:func:`lineas_tl.sites.paper_sites`). SGD's step is the
gradient's size, so at residual writes with massive activations (SmolLM2's ``hook_attn_out``) lr 0.1
can diverge where it is stable on normalised outputs.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from lineas_tl.sites import is_pre_norm_site
from lineas_tl.validate import SteeringInputError, check_number

Modality = Literal["language", "unet"]

_IDENTITY_RUN = {"standardize": False, "early_stop": False, "init": "identity", "warmup": 0, "all_targets": True}

PRESETS: dict[str, dict[str, Any]] = {
    "fast": {
        "steps": 300, "lr": 1e-2, "schedule": "constant", "standardize": True, "early_stop": True,
        "init": "mean_act", "warmup": 0, "optimizer": "adam", "batch_size": None, "all_targets": False,
    },
    "paper_short": {"steps": 300, "lr": 0.1, "schedule": "cosine", "optimizer": "sgd", "batch_size": None, **_IDENTITY_RUN},
    "paper_language": {"steps": 1000, "lr": 0.1, "schedule": "cosine", "optimizer": "sgd", "batch_size": None, **_IDENTITY_RUN},
    "paper_unet": {"steps": 1000, "lr": 1e-4, "schedule": "cosine", "optimizer": "adamw", "batch_size": 4, **_IDENTITY_RUN},
    "authors_yaml": {"steps": 1000, "lr": 1e-3, "schedule": "cosine", "optimizer": "adam", "batch_size": None, **_IDENTITY_RUN},
}  # fmt: skip
PRESET_NAMES = ("auto", "fast", "paper", "paper_short", "paper_language", "paper_unet", "authors_yaml")
# presets whose step budget is itself the regulariser: ending with the loss still falling is by design
BUDGET_BY_DESIGN = frozenset({"paper_short"})


def modality(runner: Any) -> Modality:
    """``"unet"`` for the diffusers adapter's runner, ``"language"`` for anything else."""
    from lineas_tl.diffusion.runner import DiffusionRunner

    return "unet" if isinstance(runner, DiffusionRunner) else "language"


def resolve_preset(preset: str, runner: Any, sites: Sequence[str] = ()) -> tuple[str, dict[str, Any]]:
    """The concrete preset name and a copy of its settings; ``"paper"`` becomes the modality's, and
    ``"auto"`` becomes ``"paper_short"`` for a language model steered only at pre-sublayer norm
    outputs (``sites``), else ``"fast"``.

    Raises:
        ValueError: an unknown name (the message lists them).
    """
    if preset not in PRESET_NAMES:
        raise ValueError(f"unknown preset {preset!r}; choose one of {list(PRESET_NAMES)}")
    if preset == "auto":
        at_norms = bool(sites) and all(map(is_pre_norm_site, sites))
        preset = "paper_short" if at_norms and modality(runner) == "language" else "fast"
    name = f"paper_{modality(runner)}" if preset == "paper" else preset
    return name, dict(PRESETS[name])


def warn_off_paper_sites(name: str, model: Any, sites: list[str]) -> None:
    """Warn once when a paper recipe runs away from the paper's sites (SGD lr 0.1 may diverge there)."""
    if not name.startswith("paper"):
        return
    from lineas_tl.sites import paper_sites

    try:
        expected = paper_sites(model)
    except ValueError:
        return
    if not set(sites) <= set(expected):
        warnings.warn(
            f"preset={name!r} is the paper's recipe at the paper's sites, and these sites are not all "
            f"among them (e.g. {sorted(set(sites) - set(expected))[0]!r}); build the steerer with "
            "HookedSteerer(model, sites='paper') or expect the lr to need tuning",
            UserWarning,
            stacklevel=4,
        )


def check_hparams(cfg: Mapping[str, Any], **extra: Any) -> None:
    """Refuse LinEAS hyper-parameters out of range before any forward pass.

    ``cfg``: the resolved preset settings (``steps``, ``lr``, ``warmup``, ``batch_size``); ``extra``:
    ``tol``, ``patience``, ``gamma``, ``l1``, ``group``, ``log_every``, ``group_by``, ``loss_on``, ``transform``.

    Raises:
        SteeringInputError: naming the argument, what was wrong and what to pass instead.
    """
    fixes = {
        "lr": "pass a positive rate, e.g. lr=1e-2 (preset='fast') or lr=0.1 (preset='paper')",
        "steps": "pass steps >= 1 (fast stops by itself before its cap of 300; paper runs 1000)",
        "tol": "pass a small positive share, e.g. tol=3e-4 (the default)",
        "patience": "pass a window of at least one step, e.g. patience=20 (the default)",
        "gamma": "pass gamma=0 for no sparsity, or a positive strength such as 1e-3",
        "l1": "pass a non-negative weight (default 1.0)",
        "group": "pass a non-negative weight (default 1.0)",
        "warmup": "pass warmup=0 for none, or a number of steps",
        "batch_size": "pass a positive number of prompts per step, or None for min(32, prompts)",
        "log_every": "pass a positive number of steps, e.g. 10",
    }
    rules: dict[str, dict[str, Any]] = {
        "lr": {"positive": True},
        "steps": {"integer": True, "minimum": 1},
        "tol": {"positive": True},
        "patience": {"integer": True, "minimum": 1},
        "gamma": {"minimum": 0},
        "l1": {"minimum": 0},
        "group": {"minimum": 0},
        "warmup": {"integer": True, "minimum": 0},
        "batch_size": {"integer": True, "minimum": 1},
        "log_every": {"integer": True, "minimum": 1},
    }
    choices = {"group_by": ("site", "head"), "loss_on": ("sites", "restricted"), "transform": ("affine", "shift")}
    for name, (paper, other) in choices.items():
        if extra.get(name, paper) not in (paper, other):
            raise SteeringInputError(f"{name} must be {paper!r} or {other!r}, not {extra[name]!r}: pass {paper!r} (the paper's) or {other!r}")
    if extra.get("transform") == "shift" and (cfg.get("init") == "linear_act" or cfg.get("standardize") == "both"):
        what = "init='linear_act' starts from scaled maps" if cfg.get("init") == "linear_act" else "standardize='both' moves omega"
        raise SteeringInputError(f"transform='shift' holds omega at 1, but {what}: pass init='mean_act' or 'identity', and standardize=True or False")
    values = {**{k: cfg.get(k) for k in ("lr", "steps", "warmup", "batch_size")}, **extra}
    for name, rule in rules.items():
        value = values.get(name)
        if value is None and name == "batch_size":
            continue
        try:
            check_number(name, value, **rule)
        except SteeringInputError as err:
            raise SteeringInputError(f"{err}: {fixes[name]}") from None
