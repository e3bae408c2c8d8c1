"""Does a saved steerer fit this model? Its sites must be hook points, and its maps' widths must match."""

from __future__ import annotations

from typing import Any

import torch

from lineas_tl.sites import hook_points


class SteererMismatchError(ValueError):
    """A saved steerer that does not fit the model it is loaded onto (sites, widths, architecture)."""


def check_sites(meta: dict[str, Any], model: Any, fitted_on: str) -> None:
    points = hook_points(model)
    canonical = {hp.name or name for name, hp in points.items()} | set(points)
    wanted = list(dict.fromkeys([*meta["sites"], *meta["maps"]]))
    missing = [s for s in wanted if s not in canonical]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise SteererMismatchError(
            f"this steerer does not fit {describe_model(model)}: site(s) {shown} are not hook points "
            f"of this model. It was fitted on {fitted_on}; load it onto that model."
        )


def check_widths(meta: dict[str, Any], model: Any, fitted_on: str) -> None:
    """Compare each map's feature shape with the model's, read from a one-token probe pass."""
    shapes = _probe_shapes(model, list(meta["maps"]))
    if shapes is None:
        return
    for site, info in meta["maps"].items():
        saved = tuple(int(s) for s in info["feature_shape"])
        here = shapes.get(site)
        if here is not None and tuple(here) != saved:
            raise SteererMismatchError(
                f"width mismatch at site {site!r}: the steerer's map has features {saved}, this "
                f"model's activation there has {tuple(here)}. It was fitted on {fitted_on}; load it "
                "onto that model."
            )


def _probe_shapes(model: Any, sites: list[str]) -> dict[str, tuple[int, ...]] | None:
    from lineas_tl.collect import pooled_forward
    from lineas_tl.runner import LanguageModelRunner, get_runner

    runner = get_runner(model)
    if not isinstance(runner, LanguageModelRunner):
        return None  # no universal probe input; the architecture fingerprint still guards
    try:
        batch = runner.prepare([[0]]).batch([0])
        with torch.no_grad():
            _, shapes = pooled_forward(runner, batch, sites)
    except Exception:  # noqa: BLE001  (the fingerprint check still reports the mismatch)
        return None
    return {site: shape for site, (_, shape) in shapes.items()}


def describe_model(model: Any) -> str:
    """A short human description, e.g. ``"TransformerBridge(LlamaForCausalLM, 30 layers, d_model 576)"``."""
    cfg = getattr(model, "cfg", None)
    parts = [str(getattr(cfg, "architecture", "") or getattr(cfg, "model_name", "") or "")]
    if isinstance(getattr(cfg, "n_layers", None), int):
        parts.append(f"{cfg.n_layers} layers")
    if isinstance(getattr(cfg, "d_model", None), int):
        parts.append(f"d_model {cfg.d_model}")
    inner = ", ".join(p for p in parts if p)
    return f"{type(model).__name__}({inner})" if inner else type(model).__name__
