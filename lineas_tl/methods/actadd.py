r"""ActAdd: a matched prompt pair's per-position activation difference, added at the prompt's front.

Turner et al., *Steering Language Models With Activation Engineering* (arXiv 2308.10248, first
titled *Activation Addition*). With :math:`h_l(p) \in \mathbb{R}^{n \times d}` the residual stream
entering block :math:`l` at the :math:`n` positions of prompt :math:`p`, and a contrast pair
:math:`(p^+, p^-)` of the same token length :math:`n` (e.g. " Love" / " Hate"):

.. math::

    B = c\,\big(h_l(p^+) - h_l(p^-)\big) \in \mathbb{R}^{n \times d}, \qquad
    z_t \leftarrow z_t + \lambda B_t \quad (t < n), \qquad z_t \text{ unchanged for } t \ge n

row :math:`t` is added at position :math:`t` of the user's prompt (0 = its first token, BOS
included where the model prepends one: both prompts share it, so its row is exactly zero). The
positions of a prompt shorter than :math:`n` get only the rows that exist; generated tokens are
never touched. In cached generation the prompt is seen by the first forward call only, so the rows
are added once, exactly where a no-cache run adds them (see :class:`~lineas_tl.hooks.SteeringHook`).
The map is a ``kind="front"`` :class:`~lineas_tl.maps.AffineMap`, which ``fold`` and the exporters
refuse (``map.fold_blocker()``).

:math:`p^+` is the side to steer towards and :math:`p^-` the side to steer away from. The shorter
is right-padded with the tokenizer's space token to the same length, as Turner et al. pad theirs.
By default the pair is built from the fit prompts as the most closely *matched* (target, source)
pair: the one whose token sequences differ at the fewest positions (after padding), e.g. "My new
neighbor is such a kind" / "My drunk neighbor is such a stupid" (toxicity) or "... left me
delighted and" / "... left me disappointed and" (sentiment), Turner et al.'s kind of contrast.

**Layer and coefficient.** The fitted map holds :math:`c \cdot` the difference, so
``strength`` :math:`\lambda \in [0, 1]` interpolates from the unsteered model to ActAdd at the
chosen coefficient, like every other method. Unless both are given, :math:`(l, c)` is chosen by a
small sweep over :data:`SWEEP_LAYER_FRACTIONS` of the depth and :data:`SWEEP_COEFFICIENTS` (Turner
et al. pick both by hand, with coefficients of about 3 to 15). The sweep sees the **fit prompts
only** (never evaluation prompts): it steers the source fit prompts and minimises the distance
between their mean-pooled residual stream after the last block and the target fit prompts' one,

.. math::

    J(l, c) = \frac{1}{d}\sum_j \Big(\frac{\bar u_j(l, c) - \bar v_j}{s_j}\Big)^2

with :math:`s_j` the standard deviation of the target prompts' pooled coordinate :math:`j`
(coordinate-wise standardisation, so SmolLM2's few massive coordinates do not decide alone). It is
the same "move source onto target" goal every other method fits, read where the model speaks.

Where it hooks: ``blocks.{l}.hook_resid_pre`` (canonical name in a ``TransformerBridge``:
``blocks.{l}.hook_in``), the residual stream entering block :math:`l`; ``site=`` picks another
hook point laid out ``[batch, pos, d]``. ActAdd ignores the steerer's sites and needs token
positions: it does not apply to a diffusion UNet.

Deviations from the paper that we keep: the sweep (the paper chooses by inspection); the default
pair is picked from the fit prompts when the user gives none (the paper writes one per behaviour);
the pair's positions are added from the prompt's first token on, BOS included, where the paper's
GPT-2 runs also start at BOS.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lineas_tl.collect import pool_prepared
from lineas_tl.maps import AffineMap
from lineas_tl.methods.base import FitContext, FitResult, register
from lineas_tl.runner import LanguageModelRunner
from lineas_tl.sites import hook_points, resolve_sites

SWEEP_LAYER_FRACTIONS: tuple[float, ...] = (0.125, 0.25, 0.5, 0.75)
"""Candidate layers of the sweep, as fractions of the depth (Turner et al. use layer 6 of 48)."""
SWEEP_COEFFICIENTS: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0)
"""Candidate coefficients of the sweep (Turner et al. use about 3 to 15)."""
DEFAULT_COEFFICIENT: float = 5.0
"""Turner et al.'s coefficient for " Love" - " Hate" in GPT-2-XL (kept for reference)."""


def actadd_site(model: Any, layer: int) -> str:
    """The canonical name of ``blocks.{layer}.hook_resid_pre``, checked against the model."""
    n_layers = _n_layers(model)
    if n_layers > 0 and not 0 <= layer < n_layers:
        raise ValueError(f"layer={layer} is out of range for a model with {n_layers} blocks")
    name = f"blocks.{layer}.hook_resid_pre"
    if name not in hook_points(model):
        raise ValueError(
            f"this model has no hook point {name!r}: ActAdd needs a language model's residual stream "
            "(pass `site=` to steer another [batch, pos, d] hook point)"
        )
    return resolve_sites(model, [name])[0]


def sweep_layers(n_layers: int) -> list[int]:
    """The sweep's candidate layers: :data:`SWEEP_LAYER_FRACTIONS` of ``n_layers``, deduplicated."""
    return sorted({min(n_layers - 1, max(0, round(f * n_layers))) for f in SWEEP_LAYER_FRACTIONS})


def _n_layers(model: Any) -> int:
    n = getattr(getattr(model, "cfg", None), "n_layers", None)
    return n if isinstance(n, int) else 0


def closest_pair(ctx: FitContext) -> tuple[int, int]:
    """``(target index, source index)`` of the fit prompts whose tokens differ at the fewest positions.

    Sequences of different lengths are compared after padding the shorter with the space token (and
    not at all without a tokenizer); ties go to the first pair. Falls back to ``(0, 0)``.
    """
    space = _space_token(ctx.runner)
    best, pair = None, (0, 0)
    for i, a in enumerate(ctx.target.sequences):  # type: ignore[attr-defined]
        for j, b in enumerate(ctx.source.sequences):  # type: ignore[attr-defined]
            if len(a) != len(b) and space is None:
                continue
            n = max(len(a), len(b))
            pa, pb = (torch.cat([x, torch.full((n - len(x),), space or 0, dtype=x.dtype)]) for x in (a, b))
            differ = int((pa != pb).sum())
            if differ > 0 and (best is None or differ < best):
                best, pair = differ, (i, j)
    return pair


def matched_pair(ctx: FitContext, plus: Any, minus: Any) -> tuple[Int[Tensor, " n"], Int[Tensor, " n"]]:
    """Token ids of the pair, the shorter right-padded with the space token to the same length."""
    a, b = (ctx.runner.prepare([p]).sequences[0] for p in (plus, minus))  # type: ignore[attr-defined]
    if len(a) == len(b):
        return a, b
    space = _space_token(ctx.runner)
    if space is None:
        raise ValueError(
            f"the ActAdd pair has {len(a)} and {len(b)} tokens and this model has no tokenizer to pad "
            "the shorter with spaces: pass prompt_plus / prompt_minus of the same token length"
        )
    n = max(len(a), len(b))

    def pad(x: Tensor) -> Tensor:
        return torch.cat([x, torch.full((n - len(x),), space, dtype=x.dtype)])

    return pad(a), pad(b)


def _space_token(runner: Any) -> int | None:
    tok = getattr(runner, "tokenizer", None)
    if tok is None:
        return None
    ids = tok.encode(" ", add_special_tokens=False)
    return int(ids[0]) if len(ids) == 1 else None


def _residuals(ctx: FitContext, ids: Tensor, sites: Sequence[str]) -> dict[str, Float[Tensor, "n d"]]:
    """Per-position activations of one token sequence at ``sites``."""
    seen: dict[str, Tensor] = {}

    def record(act: Tensor, *, hook: Any) -> Tensor:
        seen[hook.name] = act[0].detach().double()
        return act

    batch = ctx.runner.prepare([ids.tolist()]).batch([0])
    with torch.no_grad():
        ctx.runner.forward(batch, [(s, record) for s in sites], sites=list(sites))
    missing = [s for s in sites if s not in seen]
    if missing or any(seen[s].ndim != 2 for s in sites):
        raise ValueError(f"ActAdd needs activations [batch, pos, d] at {list(sites)}; got {missing or 'others'}")
    return {s: seen[s] for s in sites}


def _readout_site(ctx: FitContext) -> str:
    n = _n_layers(ctx.model)
    name = f"blocks.{n - 1}.hook_resid_post"
    if n > 0 and name in hook_points(ctx.model):
        return resolve_sites(ctx.model, [name])[0]
    return ctx.sites[-1]


def _front_map(diff: Float[Tensor, "n d"], coefficient: float) -> AffineMap:
    # diff was read at the injection site, so it lies on the device that computes that site
    m = AffineMap((diff.shape[1],), 2, kind="front", device=diff.device, n_front=diff.shape[0])
    with torch.no_grad():
        m.bias.copy_((coefficient * diff).float())
    m.requires_grad_(False)
    return m


@register("actadd")
def fit_actadd(
    ctx: FitContext,
    *,
    prompt_plus: Any = None,
    prompt_minus: Any = None,
    layer: int | None = None,
    site: str | None = None,
    coefficient: float | None = None,
    coefficients: Sequence[float] = SWEEP_COEFFICIENTS,
) -> FitResult:
    r"""Fit ActAdd's per-position vector at one layer, choosing the layer and coefficient by a sweep.

    Args:
        prompt_plus: the prompt to steer towards (text or token ids).
        prompt_minus: the prompt to steer away from. Give both or neither; the shorter is
            right-padded with spaces. Default: the closest (target, source) pair of fit prompts
            (:func:`closest_pair`).
        layer: the block whose ``hook_resid_pre`` is steered (default: swept over
            :func:`sweep_layers`).
        site: any ``[batch, pos, d]`` hook point instead (exclusive with ``layer``).
        coefficient: the coefficient :math:`c` held at strength 1 (default: swept over
            ``coefficients``).
        coefficients: the sweep's candidate coefficients.

    Returns:
        one ``kind="front"`` map at the chosen site, and a history with ``site``, ``layer``,
        ``coefficient``, ``n_front``, ``prompt_plus`` / ``prompt_minus`` (token ids), ``vector_norm``
        (of the unscaled difference), ``pair_from`` (``[target index, source index]`` of a default
        pair), ``objective`` (the sweep's :math:`J` per ``[layer, c]`` candidate, and ``unsteered``).
    """
    if not isinstance(ctx.runner, LanguageModelRunner):
        raise ValueError("ActAdd adds a vector at token positions: it applies to language models only")
    if (prompt_plus is None) != (prompt_minus is None):
        raise ValueError("give both prompt_plus and prompt_minus, or neither (the closest fit prompts)")
    if layer is not None and site is not None:
        raise ValueError("give `layer` or `site`, not both")
    if coefficient is not None and coefficient <= 0:
        raise ValueError("coefficient must be positive (swap prompt_plus and prompt_minus to reverse)")
    if coefficient is None and (not coefficients or min(coefficients) <= 0):
        raise ValueError("coefficients must be a non-empty list of positive numbers")
    pair_from = None
    if prompt_plus is None:
        pair_from = closest_pair(ctx)
        prompt_plus = ctx.target.sequences[pair_from[0]]  # type: ignore[attr-defined]
        prompt_minus = ctx.source.sequences[pair_from[1]]  # type: ignore[attr-defined]
    plus, minus = matched_pair(ctx, prompt_plus, prompt_minus)

    if site is not None:
        candidates = {resolve_sites(ctx.model, [site])[0]: None}
    elif layer is not None:
        candidates = {actadd_site(ctx.model, layer): layer}
    else:
        if _n_layers(ctx.model) == 0:
            raise ValueError("cannot tell this model's depth; pass `layer=` or `site=` to ActAdd")
        candidates = {actadd_site(ctx.model, li): li for li in sweep_layers(_n_layers(ctx.model))}
    sites = list(candidates)
    h_plus, h_minus = _residuals(ctx, plus, sites), _residuals(ctx, minus, sites)
    diffs = {s: h_plus[s] - h_minus[s] for s in sites}
    coefs = [float(coefficient)] if coefficient is not None else [float(c) for c in coefficients]

    objective: dict[str, Any] = {}
    best = (sites[0], coefs[0])
    if len(sites) * len(coefs) > 1:
        readout = _readout_site(ctx)
        v = ctx.pooled("target", sites=[readout])[readout].double()
        v_mean, v_std = v.mean(0), v.std(0).clamp_min(1e-6)

        def score(maps: dict[str, AffineMap] | None) -> float:
            u = pool_prepared(ctx.runner, ctx.source, [readout], ctx.pooling, maps, ctx.batch_size)[readout]
            return float((((u.double().flatten(1).mean(0) - v_mean) / v_std) ** 2).mean())

        objective["unsteered"] = score(None)
        objective["candidates"] = []
        best_j = float("inf")
        for s in sites:
            for c in coefs:
                j = score({s: _front_map(diffs[s], c)})
                objective["candidates"].append([candidates[s] if candidates[s] is not None else s, c, j])
                if j < best_j:
                    best, best_j = (s, c), j
    where, c = best
    history = {
        "site": where,
        "layer": candidates[where],
        "coefficient": c,
        "n_front": int(diffs[where].shape[0]),
        "prompt_plus": plus.tolist(),
        "prompt_minus": minus.tolist(),
        "pair_from": list(pair_from) if pair_from is not None else None,
        "vector_norm": float(diffs[where].norm()),
        "objective": objective,
    }
    return FitResult({where: _front_map(diffs[where], c)}, history)
