"""``HookedSteerer``: fit steering maps on a hooked model, apply them in a context, generate, save.

Example:
    >>> steerer = HookedSteerer(model).fit(source_prompts, target_prompts)   # LinEAS
    >>> with steerer.hooks(strength=0.5):          # like TransformerLens's model.hooks()
    ...     logits = model(tokens)
    >>> text = steerer.generate("The man said", strength=0.5, max_new_tokens=30)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any, Literal

from jaxtyping import Float
from torch import Tensor

from lineas_tl.calibrate import Calibration, calibrate, resolve_strength
from lineas_tl.chat import CHAT_POOLS, ChatPool, as_conversations
from lineas_tl.gate import Gate, GateOptions, fit_gate, gate_inputs, generation_batch, prepare_control
from lineas_tl.hooks import POSITIONS, GenerationPositions, Positions, SteeringHook
from lineas_tl.maps import AffineMap, support_by_site
from lineas_tl.methods import METHODS, FitContext
from lineas_tl.methods.base import frozen
from lineas_tl.pooling import POOLINGS, Pooling
from lineas_tl.runner import Hook, get_runner
from lineas_tl.sites import SiteSpec, resolve_sites
from lineas_tl.steerer_support import HookList, NotFittedError, resolve_hparams
from lineas_tl.validate import SteeringInputError, check_prompts

Strength = float | Mapping[str, float] | Literal["calibrated"]


class HookedSteerer:
    """Steers any model that exposes TransformerLens hook points.

    Args:
        model: a ``TransformerBridge``, any other ``HookedRootModule``, or a
            :class:`lineas_tl.diffusers.HookedPipeline`. Its weights are never modified (except by
            :meth:`fold`, on request).
        sites: where maps go: hook names or aliases, a regex, a callable on names, or a preset
            (``"paper"``, ``"outputs"``, ``"norms"``; see :func:`lineas_tl.sites.preset_sites`).
            Default (:func:`lineas_tl.sites.default_sites`): the paper's sites, chosen on held-out
            prompts (issue 18): in a pre-LN model (GPT-2, Llama, SmolLM2) ``blocks.L.ln2.hook_out``,
            what the MLP reads; in Gemma-2/3 both post norms; in a UNet every normalisation layer;
            ``"outputs"`` (``hook_attn_out``, ``hook_mlp_out``) in a model without those norms.
        pooling: how a site's activation becomes one vector per prompt when fitting: ``"mean"`` over
            real tokens (the paper's choice), ``"last"`` token, or ``"all"`` tokens.
        pool_bos: keep a leading BOS token in the pooling (default: left out; it is identical for
            every prompt and, in models with an attention sink, huge).
        chat_pool: which tokens of a conversation prompt are pooled: ``"user"`` content (default),
            ``"content"`` of every message, or ``"all"`` (see :mod:`lineas_tl.chat`).

    Fitted attributes (after :meth:`fit` or :meth:`load`; before, reading one raises
    :class:`~lineas_tl.steerer_support.NotFittedError`): ``maps_`` (site -> :class:`AffineMap`),
    ``method_``, ``hparams_`` (every hyper-parameter the method used, defaults included),
    ``history_``; ``calibrated_strength_`` and ``calibration_`` (the
    :class:`~lineas_tl.calibrate.Calibration` record) are None until :meth:`calibrate`.

    Strength: 0 is the unsteered model, 1 the fitted map, values in between interpolate
    (:math:`(1-\lambda) z + \lambda T(z)`) and values above 1 extrapolate (``compare`` and
    ``calibrate`` search up to 2 when asked); a converged fit at 1 can cost fluency, so pick it
    with :meth:`calibrate`.
    """

    def __init__(
        self,
        model: Any,
        sites: SiteSpec = None,
        *,
        pooling: Pooling = "mean",
        pool_bos: bool = False,
        chat_pool: ChatPool = "user",
    ):
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose one of {POOLINGS}")
        self.model = model
        if chat_pool not in CHAT_POOLS:
            raise ValueError(f"unknown chat_pool {chat_pool!r}; choose one of {CHAT_POOLS}")
        self.runner = get_runner(model, pool_bos=pool_bos, chat_pool=chat_pool)
        self.chat_pool = chat_pool
        self.sites = resolve_sites(model, sites)
        self.pooling = pooling
        self.pool_bos = pool_bos

    maps_: dict[str, AffineMap]
    method_: str | None
    hparams_: dict[str, Any]
    history_: dict[str, Any]
    calibrated_strength_: float | None
    calibration_: Calibration | None

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: a fitted attribute (``name_``) before fit.
        if name.endswith("_") and not name.startswith("_"):
            raise NotFittedError(
                f"{name} is set by fit(): this HookedSteerer is not fitted; call "
                "fit(source, target) or HookedSteerer.load(path, model) first"
            )
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def is_fitted(self) -> bool:
        """Whether :meth:`fit` (or :meth:`load`) has set the maps."""
        return "maps_" in vars(self)

    def __repr__(self) -> str:
        state = f"fitted with {self.method_!r} on {len(self.maps_)} sites" if self.is_fitted else "not fitted"
        gate = getattr(self, "gate_", None) if self.is_fitted else None
        state += f", {gate.describe()}" if gate is not None else ""
        return f"HookedSteerer({type(self.model).__name__}, {len(self.sites)} sites, {state})"

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        source_prompts: Any,
        target_prompts: Any,
        method: str = "lineas",
        *,
        collect_batch_size: int = 32,
        progress: bool = True,
        chat: bool = False,
        control: Any = None,
        gate: bool | Mapping[str, Any] | GateOptions = False,
        control_weight: float = 1.0,
        **hparams: Any,
    ) -> HookedSteerer:
        """Fit maps that move ``source_prompts``' activations to ``target_prompts``'.

        Args:
            source_prompts: prompts with the behaviour to steer away from (e.g. toxic).
            target_prompts: prompts with the behaviour to steer towards.
            method: a name from :data:`lineas_tl.methods.METHODS` (``"lineas"``, ``"linear_act"``, ...).
            collect_batch_size: prompts per forward pass when reading activations (no gradient). An
                incremental fit (Mean-AcT, Linear-AcT, LinEAS's warm start) runs in one forward pass when
                every source prompt fits in one batch, else in one pass per site.
            progress: show progress bars.
            chat: render string prompts as one-message user conversations with the tokenizer's chat
                template (prompts that are already conversations are always rendered).
            control: neutral prompts steering should leave alone (e.g. ``concept.control_prompts()``).
                LinEAS adds a term keeping their activations where the unsteered model puts them
                (weight ``control_weight``; see :mod:`lineas_tl.methods.control`).
            gate: ``True`` (or a dict / :class:`~lineas_tl.gate.GateOptions`) fits a per-site probe,
                source vs ``control``, whose probability scales each token's steering (DSAS; see
                :mod:`lineas_tl.gate`). LinEAS trains it with its maps; other methods get it after
                fitting. ``gate={"shared": True, "hard": True}``: one 0/1 gate per prompt for every
                site. Stored as ``gate_`` (None without), accuracy in ``history_["gate"]``.
            **hparams: the method's hyper-parameters (e.g. ``steps``, ``lr``, ``gamma``, ``seed``).

        Returns:
            ``self``, with ``maps_``, ``gate_`` and ``history_`` set.
        """
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
        if control is not None and not gate and method != "lineas":
            raise SteeringInputError(
                f"control= without gate=True changes only LinEAS's fit (its control term); {method!r} "
                "would ignore it. Pass gate=True to gate the maps with a probe, or drop control="
            )
        check_prompts(source_prompts, "source")
        check_prompts(target_prompts, "target")
        source_prompts = as_conversations(source_prompts, chat)
        target_prompts = as_conversations(target_prompts, chat)
        ctx = FitContext(
            runner=self.runner,
            source=self.runner.prepare(source_prompts),
            target=self.runner.prepare(target_prompts),
            sites=self.sites,
            pooling=self.pooling,
            batch_size=collect_batch_size,
            progress=progress,
            source_raw=source_prompts,
            target_raw=target_prompts,
        )
        ctx.control, ctx.gate_options = prepare_control(self.runner, control, chat, gate)
        ctx.control_weight = float(control_weight)
        with frozen(self.model):
            result = METHODS[method](ctx, **hparams)
            if ctx.gate_options is not None and ctx.fitted_gate is None:  # two stages: maps, then probes
                ctx.fitted_gate = fit_gate(ctx, list(result.maps), ctx.gate_options)
        self.maps_ = result.maps
        self.method_ = method
        self.hparams_ = resolve_hparams(METHODS[method], hparams, result.history)
        self.hparams_given_ = dict(hparams)
        self.history_ = result.history
        self.gate_: Gate | None = ctx.fitted_gate
        if self.gate_ is not None:
            self.history_["gate"] = self.gate_.summary()
        self.calibrated_strength_, self.calibration_ = None, None  # new maps: calibrate again
        return self

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError("this steerer is not fitted: call fit(source, target) or HookedSteerer.load() first")

    # ---------------------------------------------------------------- applying
    def hooks(
        self,
        strength: Strength = 1.0,
        *,
        inverse: bool = False,
        positions: Positions = "all",
        tracker: GenerationPositions | None = None,
        prompt_gate: Tensor | None = None,
    ) -> HookList:
        """Context manager, like TransformerLens's ``model.hooks()``: the maps are attached inside
        ``with steerer.hooks(0.5):`` and removed on exit, even on error. Arguments as :meth:`fwd_hooks`.

        Reading the result as a list of ``(site, hook)`` pairs still works for one release, with a
        ``DeprecationWarning``: use :meth:`fwd_hooks` for the list.
        """
        pairs = self.fwd_hooks(strength, inverse=inverse, positions=positions, tracker=tracker, prompt_gate=prompt_gate)
        return HookList(pairs, self.model)

    def fwd_hooks(
        self,
        strength: Strength = 1.0,
        *,
        inverse: bool = False,
        positions: Positions = "all",
        tracker: GenerationPositions | None = None,
        pool_mask: Any = None,
        prompt_gate: Tensor | None = None,
    ) -> list[Hook]:
        """The ``(site, hook)`` pairs that apply the fitted maps, for ``model.hooks(fwd_hooks=...)``
        or ``model.run_with_hooks(tokens, fwd_hooks=...)``.

        ``strength`` is a float for every site, ``{site: float}`` (sites left out are not
        steered), or ``"calibrated"`` (:attr:`calibrated_strength_`, see :meth:`calibrate`).
        ``inverse=True`` applies :math:`T^{-1}` (induce instead of remove). A gated steerer's hooks
        scale each token's steering by its gate (``pool_mask``: the tokens the gate counts, see
        :class:`~lineas_tl.gate.GateState`); a shared gate needs ``prompt_gate``, its ``[batch]``
        values from :meth:`prompt_gate`.
        """
        self._check_fitted()
        strength = resolve_strength(self, strength, inverse)
        if positions not in POSITIONS:
            raise ValueError(f"unknown positions {positions!r}; choose one of {POSITIONS}")
        per_site = self._strengths(strength)
        pairs: list[Hook] = [
            (site, SteeringHook(m, per_site[site], inverse, positions, tracker))
            for site, m in self.maps_.items()
        ]
        gate = getattr(self, "gate_", None)
        return pairs if gate is None else gate.wrap(pairs, tracker, pool_mask, shared=prompt_gate)

    def _strengths(self, strength: Strength) -> dict[str, float]:
        if not isinstance(strength, Mapping):
            return {site: float(strength) for site in self.maps_}
        given = {resolve_sites(self.model, [k])[0]: float(v) for k, v in strength.items()}
        unknown = set(given) - set(self.maps_)
        if unknown:
            raise ValueError(f"strength given for sites this steerer has no map at: {sorted(unknown)}")
        return {site: given.get(site, 0.0) for site in self.maps_}

    @contextlib.contextmanager
    def steer(
        self,
        strength: Strength = 1.0,
        *,
        inverse: bool = False,
        positions: Positions = "all",
        prompt_gate: Tensor | None = None,
    ) -> Iterator[HookedSteerer]:
        """Context manager: the maps are active inside, removed on exit (even on error). The same as
        :meth:`hooks`, except that it yields the steerer (``hooks`` yields the model, as TransformerLens does).

        Several steerers compose (``with a.steer(0.5), b.steer(1.0):``); at a shared site, maps apply
        in the order the contexts were entered.
        """
        pairs = self.fwd_hooks(strength, inverse=inverse, positions=positions, prompt_gate=prompt_gate)
        with self.model.hooks(fwd_hooks=pairs):
            yield self

    def generate(
        self,
        prompt: Any,
        strength: Strength = 1.0,
        *,
        inverse: bool = False,
        positions: Positions = "all",
        **kwargs: Any,
    ) -> Any:
        """Generate with the steering active.

        For a language model: ``prompt`` is a string, a list of strings (left-padded into one batch),
        a conversation or a list of them (``chat=True`` renders strings as user turns; the new tokens
        are then the assistant's reply, which ``positions="generated"`` scopes to) or token ids;
        ``positions`` says which tokens are steered (``"all"``, ``"prompt"`` or
        ``"generated"``), exactly, with or without the KV cache. Keyword arguments go to the model's
        ``generate`` (``max_new_tokens``, ``do_sample``, ``temperature``, ``top_p``,
        ``repetition_penalty``, ``use_past_kv_cache``, ...). For a diffusion pipeline, returns images
        (see :mod:`lineas_tl.diffusers`).

        Where it differs from ``TransformerBridge.generate``: decoding is **greedy** by default
        (``do_sample=False``; the bridge samples) and ``max_new_tokens`` defaults to 30 (the bridge: 10),
        so two calls compare like with like. Compare against ``steerer.generate(prompt, strength=0)``
        (the unsteered model, same settings), or pass ``do_sample=True`` to sample as the bridge does
        (seed with ``torch.manual_seed``). It returns the prompt and the continuation as text, as the
        bridge does for text; ``return_type="continuation"`` returns the new text only,
        ``return_type="tokens"`` the token ids.
        """
        self._check_fitted()

        gated = getattr(self, "gate_", None) is not None
        chat, mask = kwargs.get("chat", False), kwargs.get("attention_mask")
        gating = gate_inputs(self, generation_batch(self.runner, prompt, chat, mask)) if gated else {}

        def make_hooks(tracker: GenerationPositions | None) -> list[Hook]:
            return self.fwd_hooks(strength, inverse=inverse, positions=positions, tracker=tracker, **gating)

        return self.runner.generate(prompt, make_hooks, **kwargs)

    def calibrate(
        self, texts: Any, max_ppl_increase: float = 0.05, *, max_strength: float = 1.0, **kwargs: Any
    ) -> HookedSteerer:
        """Find the largest strength whose perplexity on ``texts`` is at most ``(1 + max_ppl_increase)``
        times the unsteered model's; store it as ``calibrated_strength_`` (and the record as
        ``calibration_``), so that ``strength="calibrated"`` uses it. Saved by :meth:`save`.
        See :func:`lineas_tl.calibrate.calibrate` for the search and its keyword arguments. Returns ``self``.
        """
        record = calibrate(self, texts, max_ppl_increase, max_strength=max_strength, **kwargs)
        self.calibration_ = record
        self.calibrated_strength_ = record.strength
        return self

    # ---------------------------------------------------------------- inspecting
    def gates(self, text: Any, strength: Strength = 1.0, *, inverse: bool = False) -> Any:
        """Per-token, per-site gate values of ``text`` under steering at ``strength`` (a gated
        steerer only): a :class:`~lineas_tl.gate.inspect.GateTrace` (``tokens``, ``values``,
        ``accuracy``, ``active``, ``mean()``)."""
        from lineas_tl.gate.inspect import gates

        self._check_fitted()
        return gates(self, text, strength, inverse=inverse)

    def prompt_gate(self, prompt: Any, *, chat: bool = False) -> Float[Tensor, " batch"]:
        """A shared gate's value for each prompt of ``prompt`` (as :meth:`generate` takes it, left-padded
        into one batch): pass it as ``fwd_hooks(..., prompt_gate=...)`` (or to ``steer``/``hooks``)
        for a forward pass of your own over the same batch. See :mod:`lineas_tl.gate.shared`."""
        self._check_fitted()
        if getattr(self, "gate_", None) is None or not self.gate_.options.shared:
            raise ValueError("prompt_gate is for a shared gate: fit with gate={'shared': True}")
        return gate_inputs(self, generation_batch(self.runner, prompt, chat))["prompt_gate"]

    def support(self) -> dict[str, float]:
        """Share of coordinates each site's map moves (``|omega-1|`` or ``|b|`` above 1e-5)."""
        self._check_fitted()
        return support_by_site(self.maps_)

    # ------------------------------------------------------- saving and serving
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the maps (safetensors) and a JSON of method, sites, hyper-parameters, fingerprint."""
        from lineas_tl.io import save_steerer

        self._check_fitted()
        save_steerer(self, path)

    def fold(
        self, strength: Strength = 1.0, *, inverse: bool = False, check: bool = True, ungated: bool = False
    ) -> Any:
        """Write the maps into the model's linear layers (zero-overhead serving); see :mod:`lineas_tl.fold`.
        A gated steerer is refused unless ``ungated=True`` (fold its maps without the gate).

        Returns a :class:`~lineas_tl.fold.FoldHandle`: ``handle.undo()`` (or leaving
        ``with steerer.fold(...):``) restores the exact original weights.
        """
        from lineas_tl.fold import fold

        return fold(self, strength, inverse=inverse, check=check, ungated=ungated)

    def export(
        self,
        path: str | os.PathLike[str],
        format: str = "gguf",
        strength: Strength | str = 1.0,
        *,
        inverse: bool = False,
        source: str | os.PathLike[str] | None = None,
        ungated: bool = False,
    ) -> Any:
        """A gated steerer is refused unless ``ungated=True`` (export its maps without the gate).

        Write the steered model for serving: ``format="gguf"`` (weights folded, for llama.cpp /
        Ollama), ``"control-vector"`` (llama.cpp, additive steerers only) or ``"hf"`` (a Hugging Face
        directory); ``strength`` may be ``"calibrated"``. See :mod:`lineas_tl.export`. Returns the path.
        """
        from lineas_tl.export import export

        self._check_fitted()
        return export(self, path, format, strength, inverse=inverse, source=source, ungated=ungated)

    @classmethod
    def load(cls, path: str | os.PathLike[str], model: Any) -> HookedSteerer:
        """Load a saved steerer onto ``model`` (an error if its sites or widths differ)."""
        from lineas_tl.io import load_steerer

        return load_steerer(cls, path, model)
