r"""A site's probe: logistic regression on a few principal components of pooled activations.

DSAS (arXiv 2512.03661) gates each site with a probe that tells the source prompts' activations
from a neutral *control* set's. Here the probe is

.. math::

    p(x) = \sigma\Big(\sum_{j=1}^{k} w_j \frac{(x - \mu)\cdot v_j}{s_j} + c\Big)
         = \sigma(x \cdot d + e), \qquad d = \sum_j \frac{w_j}{s_j} v_j,\ e = c - \mu \cdot d

with :math:`v_j` the top-``k`` principal directions of the pooled training activations,
:math:`\mu` their mean and :math:`s_j` the standard deviation along :math:`v_j`. The logit is affine
in :math:`x`, so the logit of a mean of activations is the mean of their logits: the running-mean
and prompt-mean gate drivers (:mod:`lineas_tl.gate.state`) cost one dot product per token.

The weights minimise :math:`\sum_i \log(1 + e^{-y_i t_i}) + \tfrac12 \|w\|^2` (scikit-learn's
``LogisticRegression(C=1)``; the intercept is not penalised), solved by Newton's method.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn

DEFAULT_COMPONENTS = 8
DEFAULT_THRESHOLD = 0.75
DEFAULT_HOLDOUT = 0.25


class SiteProbe(nn.Module):
    """The probe of one site; ``weight`` and ``bias`` are trainable (end-to-end LinEAS trains them).

    Buffers: ``mean`` ``[F]``, ``components`` ``[F, k]`` (unit columns), ``scale`` ``[k]``.
    ``accuracy`` is the held-out accuracy measured when fitting; ``active`` whether the site is
    steered at all (accuracy at or above the gate's threshold).
    """

    mean: Tensor
    components: Tensor
    scale: Tensor

    def __init__(self, mean: Tensor, components: Tensor, scale: Tensor, weight: Tensor, bias: Tensor,
                 accuracy: float = float("nan"), active: bool = True):  # fmt: skip
        super().__init__()
        self.register_buffer("mean", mean.detach().float().clone())
        self.register_buffer("components", components.detach().float().clone())
        self.register_buffer("scale", scale.detach().float().clone())
        self.weight = nn.Parameter(weight.detach().float().clone())
        self.bias = nn.Parameter(bias.detach().float().clone().reshape(()))
        self.accuracy = float(accuracy)
        self.active = bool(active)

    @property
    def n_components(self) -> int:
        return int(self.components.shape[1])

    def direction(self) -> tuple[Float[Tensor, " F"], Tensor]:
        """``(d, e)`` with ``logit(x) = x . d + e``."""
        d = self.components @ (self.weight / self.scale)
        return d, self.bias - self.mean @ d

    def folded(self, device: torch.device | None = None) -> tuple[Float[Tensor, " F"], Tensor]:
        """:meth:`direction` on ``device``, cached: computed again only when a tensor of the probe
        changes (in place, or replaced, e.g. by ``.to()``) or another device is asked for. While the
        probe is trained (its weights require grad and autograd is on) it is computed afresh each time."""
        tensors = (self.weight, self.bias, self.mean, self.components, self.scale)
        if torch.is_grad_enabled() and (self.weight.requires_grad or self.bias.requires_grad):
            d, e = self.direction()
            return (d, e) if device is None else (d.to(device), e.to(device))
        key = (device, self.weight.device, *[(t.data_ptr(), t._version) for t in tensors])
        cached = self.__dict__.get("_folded")
        if cached is None or cached[0] != key:
            with torch.no_grad():
                d, e = self.direction()
                if device is not None:
                    d, e = d.to(device), e.to(device)
            cached = (key, d, e)
            self.__dict__["_folded"] = cached
        return cached[1], cached[2]

    def logit(self, x: Float[Tensor, "... F"]) -> Float[Tensor, "..."]:
        d, e = self.direction()
        return x.float() @ d.to(x.device) + e.to(x.device)

    def unfolded_logit(self, x: Float[Tensor, "... F"]) -> Float[Tensor, "..."]:
        """The logit as the probe reads it: standardised principal components, then the weights
        (:meth:`logit` computes the same through the folded direction)."""
        z = ((x.float() - self.mean.to(x.device)) @ self.components.to(x.device)) / self.scale.to(x.device)
        return z @ self.weight.to(x.device) + self.bias.to(x.device)

    def forward(self, x: Float[Tensor, "... F"]) -> Float[Tensor, "..."]:
        return torch.sigmoid(self.logit(x))


def _pca(x: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    mean = x.mean(0)
    _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)
    comps = vh[:k].T.contiguous()  # [F, k]
    # a deterministic sign: the largest-magnitude entry of each direction is positive
    sign = torch.sign(comps.gather(0, comps.abs().argmax(0, keepdim=True))).clamp_min(0) * 2 - 1
    comps = comps * sign
    scale = ((x - mean) @ comps).std(0).clamp_min(1e-6)
    return mean, comps, scale


def logistic_newton(z: Float[Tensor, "n k"], y: Float[Tensor, " n"], l2: float = 1.0, iters: int = 50) -> tuple[Tensor, Tensor]:
    """``(w, c)`` minimising ``sum log(1 + exp(-(2y-1)(z w + c))) + l2/2 |w|^2`` (float64 Newton)."""
    z64, y64 = z.double(), y.double()
    a = torch.cat([z64, torch.ones(len(z64), 1, dtype=torch.float64)], 1)
    theta = torch.zeros(a.shape[1], dtype=torch.float64)
    reg = torch.full((a.shape[1],), float(l2), dtype=torch.float64)
    reg[-1] = 0.0  # the intercept is not penalised
    for _ in range(iters):
        p = torch.sigmoid(a @ theta)
        grad = a.T @ (p - y64) + reg * theta
        hess = (a * (p * (1 - p))[:, None]).T @ a + torch.diag(reg) + 1e-10 * torch.eye(a.shape[1], dtype=torch.float64)
        step = torch.linalg.solve(hess, grad)
        theta = theta - step
        if float(step.abs().max()) < 1e-10:
            break
    return theta[:-1].float(), theta[-1].float()


def fit_probe(
    source: Float[Tensor, "n F"],
    control: Float[Tensor, "m F"],
    *,
    n_components: int = DEFAULT_COMPONENTS,
    threshold: float = DEFAULT_THRESHOLD,
    holdout: float = DEFAULT_HOLDOUT,
    seed: int = 0,
) -> SiteProbe:
    """Fit a site's probe: source (label 1) against control (label 0) pooled activations.

    A ``holdout`` share of each class (at least one prompt) is held out: the probe fitted on the
    rest measures ``accuracy`` there. The probe returned is then refitted on every prompt (principal
    components included); the site is ``active`` when the held-out accuracy is at least ``threshold``.
    """
    source, control = source.detach().flatten(1).float().cpu(), control.detach().flatten(1).float().cpu()
    if len(source) < 2 or len(control) < 2:
        raise ValueError("a gate probe needs at least two source and two control prompts")
    gen = torch.Generator().manual_seed(seed)

    def split(n: int) -> tuple[Tensor, Tensor]:
        perm = torch.randperm(n, generator=gen)
        n_out = min(n - 1, max(1, round(holdout * n)))
        return perm[n_out:], perm[:n_out]

    (s_tr, s_te), (c_tr, c_te) = split(len(source)), split(len(control))
    train = torch.cat([source[s_tr], control[c_tr]])
    y_train = torch.cat([torch.ones(len(s_tr)), torch.zeros(len(c_tr))])
    probe = _fit(train, y_train, n_components)
    test = torch.cat([source[s_te], control[c_te]])
    y_test = torch.cat([torch.ones(len(s_te)), torch.zeros(len(c_te))])
    with torch.no_grad():
        accuracy = float(((probe(test) > 0.5).float() == y_test).float().mean())
    full = _fit(torch.cat([source, control]), torch.cat([torch.ones(len(source)), torch.zeros(len(control))]), n_components)
    full.accuracy, full.active = accuracy, accuracy >= threshold
    return full


def _fit(x: Tensor, y: Tensor, n_components: int) -> SiteProbe:
    k = max(1, min(int(n_components), x.shape[0] - 1, x.shape[1]))
    mean, comps, scale = _pca(x, k)
    w, c = logistic_newton(((x - mean) @ comps) / scale, y)
    return SiteProbe(mean, comps, scale, w, c)
