"""Pool a site's activation into one feature vector per prompt (or per token).

An activation is laid out ``[batch, *other, *features, *trailing]`` where the features start at
``feature_axis``: ``[batch, pos, d_model]`` and ``[batch, pos, head, d_head]`` in a language model
(axis 2), ``[batch, channel, height, width]`` in a UNet (axis 1). Pooling averages every non-batch,
non-feature axis; with a ``[batch, pos]`` mask, only the real tokens count.
"""

from __future__ import annotations

from typing import Literal

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor

Pooling = Literal["mean", "last", "all"]
POOLINGS: tuple[str, ...] = ("mean", "last", "all")


def to_features_last(act: Tensor, feature_axis: int, n_features: int) -> Tensor:
    """Move the feature axes to the end: ``[batch, *rest, *features]``."""
    if act.ndim == feature_axis + n_features:
        return act
    lead = list(range(feature_axis)) + list(range(feature_axis + n_features, act.ndim))
    feat = list(range(feature_axis, feature_axis + n_features))
    return act.permute(*lead, *feat)


def pool(
    act: Tensor,
    feature_shape: tuple[int, ...],
    feature_axis: int,
    mask: Int[Tensor, "batch pos"] | None = None,
    how: Pooling = "mean",
) -> Float[Tensor, "n features"]:
    """Pool ``act`` to ``[batch, prod(feature_shape)]`` (``[n_real_tokens, ...]`` for ``"all"``).

    ``mask`` (when given) weights axis 1, the token positions; ``"last"`` takes the last real token
    (right or left padding alike).
    """
    if how not in POOLINGS:
        raise ValueError(f"unknown pooling {how!r}; choose one of {POOLINGS}")
    n_feat = len(feature_shape)
    x = to_features_last(act, feature_axis, n_feat)
    x = x.reshape(x.shape[0], -1, *feature_shape)  # [batch, positions, *features]
    x = einops.rearrange(x, "b p ... -> b p (...)")
    mask = _checked_mask(mask, x)
    m = mask.to(device=x.device, dtype=x.dtype)
    if how == "mean":
        return einops.einsum(x, m, "b p f, b p -> b f") / m.sum(1, keepdim=True).clamp_min(1)
    if how == "last":
        pos = torch.arange(x.shape[1], device=x.device)
        last = (pos * mask.to(x.device).long()).argmax(1)  # highest real position
        return x[torch.arange(x.shape[0], device=x.device), last]
    return x[mask.to(x.device).bool()]


def _checked_mask(mask: Tensor | None, x: Tensor) -> Tensor:
    """``mask`` for ``x``'s ``[batch, positions]`` (all ones when None); an error if it does not fit."""
    if mask is None:
        return torch.ones(x.shape[:2], device=x.device, dtype=torch.long)
    if mask.shape != x.shape[:2]:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not fit activation positions {tuple(x.shape[:2])}")
    return mask


class BatchPooler:
    """:func:`pool` for every site of one forward pass, with the mask work done once.

    A fit pools dozens of sites per forward pass over the same ``[batch, pos]`` mask: the mask's
    check, cast, move and count are done once per dtype and device instead of once per site. The
    arithmetic is :func:`pool`'s (same kernels, same order), so the results are identical.
    """

    def __init__(self, mask: Int[Tensor, "batch pos"] | None, how: Pooling = "mean"):
        if how not in POOLINGS:
            raise ValueError(f"unknown pooling {how!r}; choose one of {POOLINGS}")
        self.mask, self.how = mask, how
        self._weights: dict[tuple[torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}

    def __call__(
        self, act: Tensor, feature_shape: tuple[int, ...], feature_axis: int
    ) -> Float[Tensor, "n features"]:
        n_feat = len(feature_shape)
        if self.how != "mean" or feature_axis != 2 or act.ndim != 2 + n_feat:
            return pool(act, feature_shape, feature_axis, self.mask, self.how)
        x = act.flatten(2) if n_feat != 1 else act  # [batch, pos, features]
        key = (x.dtype, x.device)
        cached = self._weights.get(key)
        if cached is None:
            m = _checked_mask(self.mask, x).to(device=x.device, dtype=x.dtype)
            cached = self._weights[key] = (m, m.sum(1, keepdim=True).clamp_min(1))
        elif cached[0].shape != x.shape[:2]:
            return pool(act, feature_shape, feature_axis, self.mask, self.how)  # raises the same error
        m, count = cached
        return torch.einsum("bpf,bp->bf", x, m) / count
