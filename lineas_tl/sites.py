"""Choose hook sites by name, regex or predicate, and resolve aliases to canonical names.

A *site* is a TransformerLens ``HookPoint`` whose output a steering map rewrites. Every model we
steer exposes ``hook_dict`` (name -> HookPoint, aliases included); the canonical name of a site is
``hook_dict[name].name``, which is also what ``hook.name`` reports inside a hook function.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from typing import Any

SiteSpec = str | Sequence[str] | Callable[[str], bool] | None

_BLOCK_RE = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def hook_points(model: Any) -> dict[str, Any]:
    """Return ``name -> HookPoint`` for every hook point of ``model``, aliases included."""
    if not hasattr(model, "hook_dict"):
        raise TypeError(
            f"{type(model).__name__} exposes no TransformerLens hook points (no `hook_dict`). "
            "Pass a TransformerBridge, another HookedRootModule, or wrap a diffusers model with "
            "lineas_tl.diffusers.HookedPipeline."
        )
    return dict(model.hook_dict)


def canonical_names(model: Any) -> list[str]:
    """Canonical hook names in the model's registration (forward) order, without aliases."""
    seen: dict[str, None] = {}
    for name, hp in hook_points(model).items():
        seen.setdefault(hp.name or name, None)
    return list(seen)


def block_index(name: str) -> int | None:
    """The transformer block a site lives in (``blocks.3.attn.hook_out`` -> 3), else None."""
    match = _BLOCK_RE.search(name)
    return int(match.group(1)) if match else None


SITE_PRESETS = ("outputs", "norms", "paper")


def paper_sites(model: Any) -> list[str]:
    """Where the LinEAS paper places its maps on this architecture, in forward order.

    The authors' language runs hook, and compute the loss at, every module matching
    ``.*post.*layernorm`` (their README command for toxicity; ``docs/fitting.md``), and their
    text-to-image runs every normalisation layer of the UNet (the paper's text). In
    TransformerLens names:

    - a diffusers UNet (:class:`~lineas_tl.diffusers.HookedPipeline`): every normalisation layer
      that carries a hook point (``unet.*norm*``; 256 modules in SDXL's UNet);
    - a model with post-sublayer norms (Gemma-2/3): both, ``blocks.L.ln1_post.hook_out`` and
      ``blocks.L.ln2_post.hook_out``;
    - a pre-LN model (GPT-2, Llama, Qwen2, SmolLM2): ``blocks.L.ln2.hook_out``, one site per block.
      The regex matches only ``post_attention_layernorm`` there, the norm between attention and
      the MLP, whose output the MLP reads.

    Raises:
        ValueError: a model with none of these hook points.
    """
    if hasattr(model, "paper_steering_sites"):
        return resolve_sites(model, list(model.paper_steering_sites()))
    names = hook_points(model)
    suffixes = ("ln1_post.hook_out", "ln2_post.hook_out") if has_post_norms(model) else ("ln2.hook_out",)
    wanted = [n for i in range(_n_layers(model)) for x in suffixes if (n := f"blocks.{i}.{x}") in names]
    if not wanted:
        raise ValueError(
            f"{type(model).__name__} has no hook points for the paper's sites (looked for "
            f"blocks.L.{suffixes[-1]}); pass `sites=` explicitly (hook names, a regex or a callable)."
        )
    return resolve_sites(model, wanted)


def preset_sites(model: Any, preset: str) -> list[str]:
    """The sites of a named ``preset``, in forward order.

    - ``"paper"``: the paper's own placement per architecture, see :func:`paper_sites`.

    - ``"outputs"``: ``blocks.L.hook_attn_out`` and ``blocks.L.hook_mlp_out``, what each sublayer
      adds to the residual stream.
    - ``"norms"``: layer-norm outputs, the paper's sites. Where a block has post-sublayer norms
      (Gemma-2/3: ``blocks.L.ln1_post.hook_out``, ``blocks.L.ln2_post.hook_out``) these are exactly
      the paper's; in a pre-LN model (GPT-2, Llama, SmolLM2) the norms sit before each sublayer, and
      the preset takes their outputs, ``blocks.L.ln1.hook_out`` and ``blocks.L.ln2.hook_out``: what the
      attention and the MLP read. Steering there changes what a sublayer sees but not the residual
      stream that skips it. (The paper's own pre-LN placement is ``"paper"``: ``ln2`` only.)
    """
    if preset not in SITE_PRESETS:
        raise ValueError(f"unknown site preset {preset!r}; choose one of {SITE_PRESETS}")
    if preset == "paper":
        return paper_sites(model)
    names = hook_points(model)
    if preset == "outputs":
        pairs = [("hook_attn_out", "hook_mlp_out")]
    else:
        pairs = [("ln1_post.hook_out", "ln2_post.hook_out"), ("ln1.hook_out", "ln2.hook_out")]
    for first, second in pairs:
        wanted = [
            n for i in range(_n_layers(model)) for n in (f"blocks.{i}.{first}", f"blocks.{i}.{second}") if n in names
        ]
        if wanted:
            return resolve_sites(model, wanted)
    raise ValueError(
        f"{type(model).__name__} has no hook points for the {preset!r} site preset "
        f"(looked for blocks.L.{pairs[0][0]}); pass `sites=` explicitly (hook names, a regex or a callable)."
    )


_PRE_NORM_RE = re.compile(r"(?:^|\.)blocks\.\d+\.ln\d+\.hook_(?:out|normalized)$")


def is_pre_norm_site(name: str) -> bool:
    """Whether a site is a pre-sublayer layer norm's output (``blocks.3.ln2.hook_out``: what the
    MLP reads), the paper's site in a pre-LN model. Post norms (``ln1_post``, Gemma-2/3), which
    write to the residual stream, are not."""
    return _PRE_NORM_RE.search(name) is not None


def has_post_norms(model: Any) -> bool:
    """Whether the blocks have post-sublayer norms (Gemma-2/3 style), the paper's own sites."""
    return "blocks.0.ln1_post.hook_out" in hook_points(model)


def default_sites(model: Any) -> list[str]:
    """The default steering sites of ``model``.

    The paper's sites (:func:`paper_sites`), where the library's default fit was chosen on held-out
    prompts (issue 18, ``results/preset_screen/``): ``blocks.L.ln2.hook_out`` in a pre-LN model,
    both post norms in Gemma-2/3; a model may define ``default_steering_sites()`` (the diffusers
    adapter does: every normalisation layer). A model without those norms gets every block's
    attention output and MLP output (``"outputs"``, the default before issue 18).
    """
    if hasattr(model, "default_steering_sites"):
        return resolve_sites(model, list(model.default_steering_sites()))
    try:
        return paper_sites(model)
    except ValueError:
        return preset_sites(model, "outputs")


def resolve_sites(model: Any, sites: SiteSpec = None) -> list[str]:
    """Resolve a site specification to canonical hook names, in forward order, without duplicates.

    Args:
        model: a model exposing TransformerLens hook points.
        sites: ``None`` for :func:`default_sites`; a preset name (``"outputs"``, ``"norms"``,
            ``"paper"``: see :func:`preset_sites` and :func:`paper_sites`); a hook name or alias; a list of them; a regular expression matched
            against every name (full match); or a callable on names.

    Raises:
        ValueError: a name that is not a hook point (the message lists close matches), or a
            pattern/predicate that selects nothing.
    """
    if sites is None:
        return default_sites(model)
    points = hook_points(model)
    if isinstance(sites, str) and sites in SITE_PRESETS and sites not in points:
        return preset_sites(model, sites)
    order = {name: i for i, name in enumerate(canonical_names(model))}
    chosen: set[str] = set()
    if callable(sites):
        chosen = {points[n].name or n for n in points if sites(n)}
        if not chosen:
            raise ValueError("the site predicate selected no hook point of the model")
    else:
        specs = [sites] if isinstance(sites, str) else list(sites)
        if not specs:
            raise ValueError("`sites` is an empty list; pass None for the default sites")
        for spec in specs:
            chosen |= _resolve_one(points, spec)
    return sorted(chosen, key=lambda n: order.get(n, len(order)))


def _resolve_one(points: dict[str, Any], spec: str) -> set[str]:
    if spec in points:
        return {points[spec].name or spec}
    try:
        pattern = re.compile(spec)
    except re.error:
        pattern = None
    if pattern is not None:
        matched = {points[n].name or n for n in points if pattern.fullmatch(n)}
        if matched:
            return matched
    close = difflib.get_close_matches(spec, list(points), n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ValueError(
        f"{spec!r} is not a hook point of this model and matches none as a regex.{hint} "
        "List them with `model.hook_dict.keys()`."
    )


def _n_layers(model: Any) -> int:
    cfg = getattr(model, "cfg", None)
    n = getattr(cfg, "n_layers", None)
    if isinstance(n, int):
        return n
    found = [block_index(name) for name in hook_points(model)]
    return max((i for i in found if i is not None), default=-1) + 1


def stop_layer(model: Any, sites: Sequence[str]) -> int | None:
    """The ``stop_at_layer`` that still runs every site (None when the last block is needed).

    Sites outside the block stack (embeddings, unembedding, unknown layouts) disable early stopping.
    """
    idx = [block_index(s) for s in sites]
    n = _n_layers(model)
    if not idx or any(i is None for i in idx) or n <= 0:
        return None
    deepest = max(i for i in idx if i is not None) + 1
    return deepest if deepest < n else None
