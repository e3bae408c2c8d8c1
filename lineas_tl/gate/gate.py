"""The gate of a steerer: one probe per site, the driver, and how it is fitted and attached.

``HookedSteerer.fit(source, target, control=..., gate=True)`` fits a gate for any method; see
:mod:`lineas_tl.gate` for the picture. Baselines are gated in two stages (their maps first, then
the probes on the unsteered model's pooled activations, source against control); LinEAS trains its
maps and the probes' weights together (:mod:`lineas_tl.methods.control`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from lineas_tl.gate.probe import DEFAULT_COMPONENTS, DEFAULT_HOLDOUT, DEFAULT_THRESHOLD, SiteProbe, fit_probe
from lineas_tl.gate.shared import read_shared_gate
from lineas_tl.gate.state import DRIVERS, GatedSteeringHook, GateState
from lineas_tl.validate import SteeringInputError, check_number

DEFAULT_DRIVER = "prompt"


@dataclass
class GateOptions:
    """How a gate is fitted and driven.

    Attributes:
        driver: ``"prompt"`` (default), ``"running"`` or ``"token"`` (see :mod:`lineas_tl.gate.state`).
        threshold: held-out probe accuracy below which a site is not steered (DSAS: 0.75).
        n_components: principal components the probe reads.
        holdout: share of each prompt set held out to measure the probe's accuracy.
        seed: seeds the held-out split.
        train_probes: end-to-end LinEAS only: train the probes' weights with the maps (True) or keep
            the two-stage probes fixed and train the maps through them (False). Other methods
            always fit their probes in a second stage.
        end_to_end: LinEAS only: train the maps with the gate and the control term in the loop
            (True), or fit them as without a gate and the probes after them, in two stages as for
            the baselines (False; ``train_probes`` is then moot). Default: True, except with
            ``shared`` or ``hard``, which are fitted in two stages (a hard gate has no gradient,
            and a shared one is read in a pass of its own).
        shared: one gate per prompt for every site, the active probes' vote on the unsteered
            prompt, instead of one per site (:mod:`lineas_tl.gate.shared`). Every map is then
            steered, whether its own probe is active or not. Language models only.
        hard: the gate is 0 or 1 (the probe's probability, or the shared vote, at least 1/2)
            instead of the probability itself.
        vote_sites: a shared gate only: the vote reads the first ``vote_sites`` active probes in
            the model's order (default: all of them), and its pass over the prompt stops after the
            last of them, so it costs that share of a forward pass. Read at inference only: it
            can be changed on a fitted steerer (``steerer.gate_.options.vote_sites = 8``).
    """

    driver: str = DEFAULT_DRIVER
    threshold: float = DEFAULT_THRESHOLD
    n_components: int = DEFAULT_COMPONENTS
    holdout: float = DEFAULT_HOLDOUT
    seed: int = 0
    train_probes: bool = True
    end_to_end: bool | None = None
    shared: bool = False
    hard: bool = False
    vote_sites: int | None = None

    def __post_init__(self) -> None:
        if self.vote_sites is not None:
            check_number("gate vote_sites", self.vote_sites, minimum=1, integer=True)
            if not self.shared:
                raise SteeringInputError("vote_sites sets how many probes vote on a shared gate; add shared=True or drop it")
        if self.shared and self.driver != "prompt":
            raise SteeringInputError(f"a shared gate is read from the whole prompt; drop driver={self.driver!r}")
        if self.end_to_end is None:
            self.end_to_end = not (self.shared or self.hard)
        elif self.end_to_end and (self.shared or self.hard):
            raise SteeringInputError(
                "a shared or hard gate is fitted in two stages (maps, then probes): a hard gate has no "
                "gradient and a shared one is read in a pass of its own; drop end_to_end=True"
            )
        if self.driver not in DRIVERS:
            raise SteeringInputError(f"unknown gate driver {self.driver!r}; choose one of {DRIVERS}")
        if not 0.0 <= check_number("gate threshold", self.threshold) <= 1.0:
            raise SteeringInputError(f"gate threshold must lie in [0, 1], not {self.threshold}")
        if not 0.0 < check_number("gate holdout", self.holdout) < 1.0:
            raise SteeringInputError(f"gate holdout must lie in (0, 1), not {self.holdout}")
        check_number("gate n_components", self.n_components, minimum=1, integer=True)

    @classmethod
    def of(cls, gate: Any) -> GateOptions | None:
        """``fit``'s ``gate=`` argument as options: False/None -> None, True -> defaults, a dict or options."""
        if gate is None or gate is False:
            return None
        if gate is True:
            return cls()
        if isinstance(gate, cls):
            return gate
        if isinstance(gate, Mapping):
            unknown = set(gate) - set(cls.__dataclass_fields__)
            if unknown:
                raise SteeringInputError(f"unknown gate options {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
            return cls(**gate)
        raise SteeringInputError(f"gate must be True, False, a dict or GateOptions, not {type(gate).__name__}")


@dataclass
class Gate:
    """A fitted gate: ``probes`` (site -> :class:`SiteProbe`) and the options it was fitted with."""

    probes: dict[str, SiteProbe]
    options: GateOptions = field(default_factory=GateOptions)
    trained: bool = False
    """Whether the probes' weights were trained with the maps (end-to-end LinEAS)."""

    @property
    def driver(self) -> str:
        return self.options.driver

    @property
    def accuracy(self) -> dict[str, float]:
        return {s: p.accuracy for s, p in self.probes.items()}

    @property
    def active_sites(self) -> list[str]:
        return [s for s, p in self.probes.items() if p.active]

    def parameters(self) -> list[Tensor]:
        return [t for s in self.active_sites for t in (self.probes[s].weight, self.probes[s].bias)]

    def requires_grad_(self, flag: bool) -> Gate:
        for p in self.probes.values():
            p.requires_grad_(flag)
        return self

    def summary(self) -> dict[str, Any]:
        """What ``history_["gate"]`` records: options, per-site held-out accuracy, active sites."""
        return {
            **asdict(self.options),
            "trained": self.trained,
            "accuracy": self.accuracy,
            "active": self.active_sites,
            "n_active": len(self.active_sites),
            "n_sites": len(self.probes),
        }

    def describe(self) -> str:
        """One line for a fit summary, e.g. ``"gate (prompt): 41/60 sites, accuracy 0.62-1.00"``."""
        acc = [a for a in self.accuracy.values() if a == a]
        span = f", held-out accuracy {min(acc):.2f}-{max(acc):.2f}" if acc else ""
        kind = ("shared " if self.options.shared else "") + ("hard " if self.options.hard else "")
        driver = self.driver
        if self.options.shared:
            n = len(self.active_sites[: self.options.vote_sites])
            driver = "prompt vote" if self.options.vote_sites is None else f"prompt vote of the first {n} active sites"
        return f"{kind}gate ({driver}): {len(self.active_sites)}/{len(self.probes)} sites active{span}"

    def wrap(
        self,
        hooks: Sequence[tuple[str, Any]],
        tracker: Any = None,
        pool_mask: Tensor | None = None,
        record: dict[str, Tensor] | None = None,
        shared: Tensor | None = None,
    ) -> list[tuple[str, Any]]:
        """Gate steering hooks: each ``(site, SteeringHook)`` becomes a :class:`GatedSteeringHook`.

        All hooks share one :class:`GateState` (one per generation or forward pass). A shared gate
        needs ``shared``, the ``[batch]`` values :func:`~lineas_tl.gate.shared.read_shared_gate`
        read from the prompt.
        """
        if self.options.shared and shared is None:
            raise SteeringInputError(
                "this steerer's gate is shared: it reads the whole prompt before steering. Use "
                "steerer.generate(...), or pass prompt_gate=steerer.prompt_gate(prompt) to "
                "fwd_hooks / steer / hooks for a forward pass of your own"
            )
        state = GateState(tracker, pool_mask, record, hard=self.options.hard,
                          shared=shared if self.options.shared else None)  # fmt: skip
        out = []
        for site, hook in hooks:
            probe = self.probes.get(site)
            if probe is None:
                raise KeyError(f"the gate has no probe at site {site!r}")
            out.append((site, GatedSteeringHook(site, hook, probe, self.driver, state)))
        return out


def fit_gate(ctx: Any, sites: Sequence[str], options: GateOptions) -> Gate:
    """Fit a probe at every site in ``sites`` on the unsteered model: source vs ``ctx.control``.

    ``ctx`` is a :class:`~lineas_tl.methods.base.FitContext` whose ``control`` holds the prepared
    control prompts. Probes live on each site's device.
    """
    if getattr(ctx, "control", None) is None:
        raise SteeringInputError("a gate needs control prompts: fit(source, target, control=..., gate=True)")
    from lineas_tl.collect import pool_prepared

    sites = list(sites)
    source = ctx.pooled("source", sites=sites)
    control = pool_prepared(ctx.runner, ctx.control, sites, ctx.pooling, None, ctx.batch_size)
    probes = {}
    for i, site in enumerate(sites):
        probe = fit_probe(source[site], control[site].flatten(1), n_components=options.n_components,
                          threshold=options.threshold, holdout=options.holdout, seed=options.seed + i)  # fmt: skip
        probes[site] = probe.to(source[site].device).requires_grad_(False)
    return Gate(probes, options)


def prepare_control(runner: Any, control: Any, chat: bool, gate: Any) -> tuple[Any, GateOptions | None]:
    """``fit``'s ``control=`` and ``gate=`` arguments, checked: ``(prepared control or None, options or None)``."""
    from lineas_tl.chat import as_conversations
    from lineas_tl.validate import check_prompts

    options = GateOptions.of(gate)
    if control is None:
        if options is not None:
            raise SteeringInputError("gate=True needs control prompts: fit(source, target, control=[...], gate=True)")
        return None, None
    check_prompts(control, "control", minimum=2)
    if options is not None and options.shared and not getattr(runner, "has_tokens", True):
        raise SteeringInputError(
            "a shared gate is read from a prompt's tokens: on a diffusion pipeline use the per-image gate (drop shared=True)"
        )
    return runner.prepare(as_conversations(control, chat)), options


def generation_batch(runner: Any, prompt: Any, chat: bool = False, attention_mask: Tensor | None = None) -> Any:
    """``prompt`` prepared and left-padded into one batch as ``runner.generate`` will pad it (None for
    a diffusion pipeline). Its ``mask`` is the tokens a gate counts."""
    from lineas_tl.chat import as_conversations, is_conversation

    if not hasattr(runner, "prepare") or not hasattr(runner, "generate") or not getattr(runner, "has_tokens", True):
        return None  # a diffusion pipeline: every position counts, and preparing would run the pipeline
    prompts = [prompt] if isinstance(prompt, str) or is_conversation(prompt) else prompt
    prompts = as_conversations(prompts, chat)
    if isinstance(prompts, Tensor) and prompts.ndim == 1:
        prompts = prompts[None]
    try:
        prepared = runner.prepare(prompts, attention_mask)
    except TypeError:
        prepared = runner.prepare(prompts)
    with torch.no_grad():
        return prepared.batch(range(len(prepared)), padding_side="left")


def gate_inputs(steerer: Any, batch: Any) -> dict[str, Any]:
    """``fwd_hooks``'s gate arguments for a forward pass over ``batch``: the tokens the gate counts
    and, for a shared gate, each row's value read from the unsteered prompt ({} without a gate)."""
    gate = getattr(steerer, "gate_", None)
    if gate is None or batch is None:
        return {}
    if not gate.options.shared:
        return {"pool_mask": batch.mask}
    return {"pool_mask": batch.mask, "prompt_gate": read_shared_gate(gate, steerer.maps_, steerer.runner, batch)}
