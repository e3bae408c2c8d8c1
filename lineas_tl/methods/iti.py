r"""ITI-c: shift the attention heads where a linear probe separates source from target.

Li et al., *Inference-Time Intervention: Eliciting Truthful Answers from a Language Model* (NeurIPS
2023); the "-c" variant (shift along the probe's normal, rather than the mass-mean direction) is the
one the AcT and LinEAS papers compare against (Rodriguez et al. 2024, 2025).

For every attention head :math:`(l, h)`, the head's output before the output projection,
:math:`z_{l,h} \in \mathbb{R}^{d_\text{head}}`, is pooled per prompt and a logistic-regression probe
(source = 0, target = 1) is fitted on a training split. Heads are ranked by the probe's accuracy on
the held-out split and the top :math:`K` are shifted along their probe's unit normal
:math:`\theta_{l,h}` (pointing towards the target class):

.. math::

    z_{l,h} \leftarrow z_{l,h} + \lambda\, \alpha\, \sigma_{l,h}\, \theta_{l,h},
    \qquad \sigma_{l,h} = \operatorname{std}\big(\langle z_{l,h}, \theta_{l,h}\rangle\big)

where :math:`\sigma_{l,h}` is the standard deviation of the pooled activations of both prompt sets
projected on :math:`\theta_{l,h}`, and :math:`\lambda` is the steering strength (``steer(strength=...)``;
:math:`\lambda = 1` is exactly ITI's :math:`\alpha`). Defaults are ITI's published ones, with
:math:`K` scaled to the model: ITI shifts 48 of LLaMA-7B's 1024 heads (4.7%), so :math:`K` defaults
to ``round(48 / 1024 * n_heads_total)`` (at least 1; 13 of SmolLM2-135M's 270 heads);
:math:`\alpha = 15`; a 4:1 train/validation split. The AcT/LinEAS papers sweep the
intervention strength for ITI-c; here that sweep is the strength :math:`\lambda`.

Where it hooks: ``blocks.L.attn.hook_z`` of every block (canonical name in a ``TransformerBridge``:
``blocks.L.attn.o.hook_in``, the input of the attention output projection :math:`W_O`, laid out
``[batch, pos, n_heads, d_head]``), i.e. *before* :math:`W_O`, as in ITI. ITI ignores the steerer's
sites; it uses the steerer's pooling (mean over real tokens by default; ITI itself probes the last
token: build the steerer with ``pooling="last"`` for that).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from lineas_tl.collect import pool_prepared, pooled_forward
from lineas_tl.maps import AffineMap
from lineas_tl.methods.base import FitContext, FitResult, register
from lineas_tl.sites import block_index, hook_points, resolve_sites

DEFAULT_K: int = 48
"""Heads shifted by ITI (Li et al. 2023, chosen for LLaMA-7B's 1024 heads)."""
DEFAULT_K_FRACTION: float = DEFAULT_K / 1024
"""ITI's share of heads shifted (48 of 1024); ``k=None`` scales it to the model's head count."""


def default_k(n_heads_total: int) -> int:
    """ITI's :data:`DEFAULT_K_FRACTION` of ``n_heads_total`` heads, rounded, at least 1."""
    return max(1, round(DEFAULT_K_FRACTION * n_heads_total))
DEFAULT_ALPHA: float = 15.0
"""ITI's intervention strength alpha, in units of the activation std along the probe direction."""


def z_sites(model: Any, layers: Sequence[int] | None = None) -> list[str]:
    """Canonical names of ``blocks.L.attn.hook_z`` for ``layers`` (every block by default)."""
    points = hook_points(model)
    if layers is None:
        n = getattr(getattr(model, "cfg", None), "n_layers", None)
        if not isinstance(n, int):
            raise ValueError("cannot tell the number of blocks of this model; pass `layers=` to ITI")
        layers = range(n)
    names = [f"blocks.{int(layer)}.attn.hook_z" for layer in layers]
    missing = [n for n in names if n not in points]
    if missing:
        raise ValueError(
            f"ITI needs the attention heads' outputs, but this model has no {missing[0]!r} hook point "
            "(ITI only applies to transformer language models)"
        )
    if not names:
        raise ValueError("`layers` is empty")
    return resolve_sites(model, names)


def head_masks(model: Any, heads: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
    """Boolean ``(n_heads, d_head)`` masks of ``heads`` (``[layer, head]`` pairs, e.g. an ITI-c
    steerer's ``history_["heads"]``), one per ``hook_z`` site holding one, keyed by canonical name:
    ``fit(..., method="lineas", restrict=...)`` then moves only those heads (build the steerer with
    ``sites=list(masks)``)."""
    n_heads, d_head = int(model.cfg.n_heads), int(model.cfg.d_head)
    layers = sorted({int(layer) for layer, _ in heads})
    site_of = dict(zip(layers, z_sites(model, layers)))
    masks = {site: torch.zeros(n_heads, d_head, dtype=torch.bool) for site in site_of.values()}
    for layer, head in heads:
        if not 0 <= int(head) < n_heads:
            raise ValueError(f"head {head} of block {layer} does not exist: the model has {n_heads} heads per block")
        masks[site_of[int(layer)]][int(head)] = True
    return masks


@register("iti")
def fit_iti(
    ctx: FitContext,
    *,
    k: int | None = None,
    alpha: float = DEFAULT_ALPHA,
    val_fraction: float = 0.2,
    layers: Sequence[int] | None = None,
    C: float = 1.0,
    seed: int = 0,
    heads: Sequence[Sequence[int]] | None = None,
) -> FitResult:
    r"""Probe every head, keep the top ``k`` by held-out accuracy, shift them along their probe.

    Args:
        k: number of heads to shift (clipped to the number of heads). Default: ITI's share,
            :func:`default_k` of the probed heads (48 of 1024 in ITI).
        alpha: shift in units of :math:`\sigma_{l,h}` at strength 1 (ITI: 15).
        val_fraction: share of each prompt set held out to score the probes (ITI: 0.2, a 4:1 split).
        layers: blocks whose heads are probed (default: all).
        C: inverse L2 regularisation of scikit-learn's ``LogisticRegression``.
        seed: seeds the stratified train/validation split.
        heads: shift these ``[layer, head]`` pairs instead of the top ``k`` (e.g. heads ranked
            another way); their probes are fitted as usual. ``k`` is then ignored.

    Returns:
        one ``kind="shift"`` map (features ``(n_heads, d_head)``) per ``hook_z`` site holding a
        selected head; other heads' shifts are zero. History: ``heads`` (selected ``[layer, head]``,
        best first), ``val_accuracy`` and ``train_accuracy`` (``[n_layers][n_heads]`` for the probed
        blocks), ``sigma`` (per selected head), ``sites``.
    """
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import train_test_split
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("ITI fits its probes with scikit-learn: `pip install scikit-learn`") from err
    if k is not None and k < 1:
        raise ValueError("k must be at least 1 (or None for ITI's share of the model's heads)")
    if not 0 < val_fraction < 1:
        raise ValueError("val_fraction must be in (0, 1)")
    n_s, n_t = len(ctx.source), len(ctx.target)
    if min(n_s, n_t) < 2:
        raise ValueError(f"ITI needs at least 2 source and 2 target prompts, got {n_s} and {n_t}")

    sites = z_sites(ctx.model, layers)
    _, shapes = pooled_forward(ctx.runner, ctx.source.batch([0]), sites, ctx.pooling)
    source = pool_prepared(ctx.runner, ctx.source, sites, ctx.pooling, None, ctx.batch_size)
    target = pool_prepared(ctx.runner, ctx.target, sites, ctx.pooling, None, ctx.batch_size)
    n_heads = shapes[sites[0]][1][0]
    if k is None:
        k = default_k(len(sites) * n_heads)
    y = np.r_[np.zeros(len(source[sites[0]])), np.ones(len(target[sites[0]]))]
    n_val = max(2, int(np.ceil(val_fraction * len(y))))  # at least one held-out row per class
    if len(y) - n_val < 2:
        raise ValueError(f"too few prompts ({len(y)}) to hold out {n_val} for validation and still train")
    idx_train, idx_val = train_test_split(np.arange(len(y)), test_size=n_val, stratify=y, random_state=seed)

    # (val_accuracy, -val_log_loss, layer_pos, head) per head; the loss breaks accuracy ties.
    scores: list[tuple[float, float, int, int]] = []
    val_acc = np.full((len(sites), n_heads), np.nan)
    train_acc = np.full((len(sites), n_heads), np.nan)
    directions: dict[tuple[int, int], np.ndarray] = {}
    sigmas: dict[tuple[int, int], float] = {}
    with tqdm(total=len(sites) * n_heads, desc="ITI probes", disable=not ctx.progress) as bar:
        for li, site in enumerate(sites):
            both = torch.cat([source[site], target[site]]).double().cpu().numpy()  # [n, H, d]
            for h in range(n_heads):
                x = both[:, h]
                probe = LogisticRegression(C=C, max_iter=1000)
                probe.fit(x[idx_train], y[idx_train])
                val_acc[li, h] = probe.score(x[idx_val], y[idx_val])
                train_acc[li, h] = probe.score(x[idx_train], y[idx_train])
                p = np.clip(probe.predict_proba(x[idx_val])[:, 1], 1e-12, 1 - 1e-12)
                yv = y[idx_val]
                loss = float(-np.mean(yv * np.log(p) + (1 - yv) * np.log(1 - p)))
                w = probe.coef_[0]
                norm = float(np.linalg.norm(w))
                if norm > 0:  # towards class 1 = target
                    theta = w / norm
                    directions[(li, h)] = theta
                    sigmas[(li, h)] = float(np.std(x @ theta))
                    scores.append((float(val_acc[li, h]), -loss, li, h))
                bar.update()
    if not scores:
        raise ValueError("no head's activations differ between the prompt sets; nothing to steer")
    scores.sort(key=lambda s: (-s[0], -s[1], s[2], s[3]))
    chosen = [(li, h) for _, _, li, h in scores[:k]]
    if heads is not None:
        position = {block_index(s): li for li, s in enumerate(sites)}
        chosen = [(position.get(int(layer), -1), int(h)) for layer, h in heads]
        if not heads or any((li, h) not in directions for li, h in chosen):
            raise ValueError(f"heads={list(heads)} names no head or one ITI did not probe or cannot steer (a head of a "
                             f"block outside `layers`, a head past {n_heads - 1}, or one whose probe is flat)")  # fmt: skip

    maps: dict[str, AffineMap] = {}
    for li, h in chosen:
        site = sites[li]
        if site not in maps:
            axis, shape = shapes[site]
            # on the device that computes the site (a model split across devices has several)
            maps[site] = AffineMap(shape, axis, kind="shift", device=source[site].device)
        shift = alpha * sigmas[(li, h)] * directions[(li, h)]
        with torch.no_grad():
            maps[site].bias[h] = torch.as_tensor(shift, dtype=torch.float32, device=maps[site].bias.device)
    for m in maps.values():
        m.requires_grad_(False)
    ordered = {s: maps[s] for s in sites if s in maps}  # forward order
    layer_of = [block_index(s) for s in sites]
    history = {
        "sites": sites,
        "heads": [[layer_of[li], h] for li, h in chosen],
        "val_accuracy": val_acc.tolist(),
        "train_accuracy": train_acc.tolist(),
        "sigma": [sigmas[c] for c in chosen],
        "k": len(chosen),
        "alpha": alpha,
    }
    return FitResult(ordered, history)

