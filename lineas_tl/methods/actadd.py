r"""ActAdd: one steering vector from one prompt pair, added at one layer, scaled by a coefficient.

Turner et al., *Activation Addition: Steering Language Models Without Optimization* (2023, arXiv
2308.10248; later *Steering Language Models With Activation Engineering*). With :math:`a_l(p)` the
residual stream entering block :math:`l` on prompt :math:`p`, pooled over its real tokens:

.. math::

    b = a_l(p^+) - a_l(p^-), \qquad T^c(z) = z + c\, b

:math:`p^+` is the side to steer towards (a *target* prompt) and :math:`p^-` the side to steer away
from (a *source* prompt), so ActAdd moves source to target like every other method here.

The strength **is** the coefficient :math:`c` and is unbounded: the fitted map holds the raw
difference (:math:`c = 1`), and ``steer(strength=c)`` / ``generate(..., strength=c)`` scale it. The
ActAdd paper uses coefficients of about 3 to 15 (e.g. 5 for "Love" - "Hate" in GPT-2-XL);
:data:`DEFAULT_COEFFICIENT` is 5. :func:`lineas_tl.evaluate.compare` maps its strengths
:math:`\lambda \in [0, 1]` to :math:`c = \lambda \cdot` ``actadd_scale`` (default
:data:`DEFAULT_COEFFICIENT`).

Where it hooks: ``blocks.{L}.hook_resid_pre`` with :math:`L` = ``n_layers // 2`` by default (the
canonical name in a ``TransformerBridge`` is ``blocks.{L}.hook_in``: the residual stream entering
block :math:`L`, before its first layer norm). ``layer=`` picks another block and ``site=`` any hook
point (e.g. one of the steerer's sites). ActAdd ignores the steerer's sites.

Difference from the paper: the original adds the *per-position* difference of the two prompts'
residual streams (padded to equal length) to the first positions of the user's prompt. Here the two
prompts are pooled with the steerer's pooling (mean over real tokens by default), and the single
mean difference vector is added at *every* position, prompt and generated alike: the same pooling
and the same kind of map as every other method, which is what makes the comparison fair.

The BOS position is left out of the pair's pooling (as in every method: the runner's pooling skips a
leading BOS unless the steerer is built with ``pool_bos=True``). Both prompts share it, so in
the original its difference is exactly zero; but a mean over prompts of different lengths
:math:`n^\pm` would keep :math:`a_l(\text{BOS})\,(1/n^+ - 1/n^-)`, and in models with an attention
sink the BOS residual is huge (SmolLM2-135M, block 15: norm 25,070 against ~163 for other tokens),
so that term would swamp the vector (measured: norm 487 with BOS, 56 without, cosine 0.06).
"""

from __future__ import annotations

from typing import Any

import torch

from lineas_tl.collect import pooled_forward
from lineas_tl.maps import AffineMap
from lineas_tl.methods.base import FitContext, FitResult, register
from lineas_tl.runner import Batch
from lineas_tl.sites import hook_points, resolve_sites

DEFAULT_COEFFICIENT: float = 5.0
"""A typical ActAdd coefficient (Turner et al. use 5 for "Love" - "Hate"); pass it as the strength."""


def actadd_site(model: Any, layer: int | None = None, fallback: list[str] | None = None) -> str:
    """The canonical name of ``blocks.{layer}.hook_resid_pre`` (``layer`` = ``n_layers // 2`` if None).

    A model without a residual-stream hook (e.g. a UNet) falls back to the middle of ``fallback``
    (the steerer's sites) when ``layer`` is None.
    """
    points = hook_points(model)
    n_layers = _n_layers(model)
    if layer is None:
        if n_layers > 0 and f"blocks.{n_layers // 2}.hook_resid_pre" in points:
            layer = n_layers // 2
        elif fallback:
            return fallback[len(fallback) // 2]
        else:
            raise ValueError("this model has no `blocks.L.hook_resid_pre`; pass `site=` to ActAdd")
    if n_layers > 0 and not 0 <= layer < n_layers:
        raise ValueError(f"layer={layer} is out of range for a model with {n_layers} blocks")
    name = f"blocks.{layer}.hook_resid_pre"
    if name not in points:
        raise ValueError(f"this model has no hook point {name!r}; pass `site=` to ActAdd")
    return resolve_sites(model, [name])[0]


def _n_layers(model: Any) -> int:
    n = getattr(getattr(model, "cfg", None), "n_layers", None)
    return n if isinstance(n, int) else 0


def _describe(prompt: Any) -> Any:
    """A JSON-friendly record of a prompt (text, or token ids)."""
    if isinstance(prompt, str):
        return prompt
    try:
        return torch.as_tensor(prompt).reshape(-1).tolist()
    except (TypeError, ValueError):
        return repr(prompt)


@register("actadd")
def fit_actadd(
    ctx: FitContext,
    *,
    prompt_plus: Any = None,
    prompt_minus: Any = None,
    layer: int | None = None,
    site: str | None = None,
) -> FitResult:
    r"""Fit the ActAdd vector :math:`b = a_l(p^+) - a_l(p^-)` as one ``kind="shift"`` map.

    Args:
        prompt_plus: the prompt to steer towards (text or token ids). Default: the first target
            prompt.
        prompt_minus: the prompt to steer away from. Default: the first source prompt. Give both
            or neither.
        layer: the block whose ``hook_resid_pre`` is steered (default ``n_layers // 2``).
        site: any hook point instead (exclusive with ``layer``).

    Returns:
        one map at the chosen site (steer with ``strength`` = the coefficient, e.g.
        :data:`DEFAULT_COEFFICIENT`), and a history with ``site``, ``prompt_plus``,
        ``prompt_minus`` and ``vector_norm``.
    """
    if (prompt_plus is None) != (prompt_minus is None):
        raise ValueError("give both prompt_plus and prompt_minus, or neither (first target / source)")
    if layer is not None and site is not None:
        raise ValueError("give `layer` or `site`, not both")
    where = resolve_sites(ctx.model, [site])[0] if site is not None else actadd_site(ctx.model, layer, ctx.sites)

    if prompt_plus is None:
        plus_batch, minus_batch = ctx.target.batch([0]), ctx.source.batch([0])
        plus_desc = _describe(ctx.target_raw[0]) if _indexable(ctx.target_raw) else None
        minus_desc = _describe(ctx.source_raw[0]) if _indexable(ctx.source_raw) else None
    else:
        plus_batch, minus_batch = _single(ctx, prompt_plus), _single(ctx, prompt_minus)
        plus_desc, minus_desc = _describe(prompt_plus), _describe(prompt_minus)

    with torch.no_grad():
        plus, shapes = pooled_forward(ctx.runner, plus_batch, [where], ctx.pooling)
        minus, _ = pooled_forward(ctx.runner, minus_batch, [where], ctx.pooling)
    axis, shape = shapes[where]
    # mean(0): one row per prompt for "mean"/"last" pooling, one per token for "all".
    vector = plus[where].double().mean(0) - minus[where].double().mean(0)
    map_ = AffineMap(shape, axis, kind="shift", device=ctx.device)
    with torch.no_grad():
        map_.bias.copy_(vector.float().reshape(shape))
    map_.requires_grad_(False)
    history = {
        "site": where,
        "prompt_plus": plus_desc,
        "prompt_minus": minus_desc,
        "vector_norm": float(map_.bias.norm()),
    }
    return FitResult({where: map_}, history)


def _indexable(prompts: Any) -> bool:
    try:
        return len(prompts) > 0
    except TypeError:
        return False


def _single(ctx: FitContext, prompt: Any) -> Batch:
    if isinstance(prompt, str):
        prompts: Any = [prompt]
    else:
        ids = torch.as_tensor(prompt, dtype=torch.long)
        if ids.ndim != 1:
            raise ValueError("prompt_plus / prompt_minus must be one text or one 1-D sequence of token ids")
        prompts = [ids.tolist()]
    return ctx.runner.prepare(prompts).batch([0])
