"""The activation cache collector: prompts -> pooled activations per site.

Streams the prompts in batches, pools each site's output as it flows past (padding masked), keeps
only the pooled result on the CPU, and stops the forward pass after the deepest requested site. The
model's own activation cache is never built, so memory does not grow with the number of prompts
beyond the pooled tensors.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from lineas_tl.chat import ChatPool, as_conversations, is_conversation
from lineas_tl.fingerprint import model_fingerprint
from lineas_tl.hooks import PoolingRecorder, SteeringHook, non_finite
from lineas_tl.maps import AffineMap
from lineas_tl.pooling import POOLINGS, BatchPooler, Pooling
from lineas_tl.runner import Batch, Prepared, Runner, get_runner
from lineas_tl.sites import SiteSpec, resolve_sites


def pooled_forward(
    runner: Runner,
    batch: Batch,
    sites: Sequence[str],
    pooling: Pooling = "mean",
    maps: Mapping[str, AffineMap] | None = None,
    strength: float = 1.0,
    detach: bool = True,
) -> tuple[dict[str, Float[Tensor, "n features"]], dict[str, tuple[int, tuple[int, ...]]]]:
    """One forward pass that pools every site's output, with ``maps`` applied where given.

    Returns the pooled activations (``[batch, n_features]`` per site, float32, on the model's device)
    and each site's ``(feature_axis, feature_shape)``. With ``detach=False`` gradients flow from the
    pooled outputs back into every upstream map: the LinEAS global loss relies on it.
    """
    maps = maps or {}
    store: dict[str, Tensor] = {}
    shapes: dict[str, tuple[int, tuple[int, ...]]] = {}
    pooler = BatchPooler(batch.mask, pooling)  # the mask cast and counted once, not once per site
    hooks: list[Any] = [
        (site, PoolingRecorder(site, runner, pooling, batch.mask, store,
                               SteeringHook(maps[site], strength) if site in maps else None,
                               detach, shapes, pooler, check=False))
        for site in sites
    ]  # fmt: skip
    # Maps on sites we do not record still steer the forward pass.
    recorded = set(sites)
    extra = [s for s in maps if s not in recorded]
    hooks += [(s, SteeringHook(maps[s], strength)) for s in extra]
    runner.forward(batch, hooks, sites=[*sites, *extra])
    missing = [s for s in sites if s not in store]
    if missing:
        raise RuntimeError(
            f"sites {missing} were never reached by the forward pass; they may not be on the path "
            "of this model's computation"
        )
    if detach:  # a read: NaN or inf is named by site (one device sync for all sites, not one each)
        _check_finite(store)
    # With detach=False (a fit) nothing here waits for the device: the caller checks its loss.
    return store, shapes


def _check_finite(store: Mapping[str, Tensor]) -> None:
    """Raise :func:`~lineas_tl.hooks.non_finite` for the first site (in forward order) with NaN or inf."""
    if not store:
        return
    flags = [x.isfinite().all() for x in store.values()]
    first = flags[0].device
    if bool(torch.stack([f.to(first) for f in flags]).all()):
        return
    raise non_finite(next(site for site, ok in zip(store, flags) if not bool(ok)))


def pool_prepared(
    runner: Runner,
    prepared: Prepared,
    sites: Sequence[str],
    pooling: Pooling = "mean",
    maps: Mapping[str, AffineMap] | None = None,
    batch_size: int = 16,
    progress: bool = False,
    device: torch.device | str | None = None,
) -> dict[str, Float[Tensor, "n ..."]]:
    """Pooled activations of all ``prepared`` prompts, streamed in batches, without gradient.

    Returns ``site -> [n, *feature_shape]`` on ``device`` (the model's device when None).
    """
    chunks: dict[str, list[Tensor]] = {s: [] for s in sites}
    # With one row per prompt, the result is allocated once and filled in place: no final
    # concatenation (which doubled the peak), and no long-lived small tensors interleaved with each
    # batch's temporaries (which fragmented the heap, so memory grew with the number of prompts).
    out: dict[str, Tensor] = {}
    shapes: dict[str, tuple[int, tuple[int, ...]]] = {}
    n = len(prepared)
    starts = range(0, n, batch_size)
    with torch.no_grad():
        for start in tqdm(starts, desc="collect", disable=not progress, leave=False):
            idx = list(range(start, min(start + batch_size, n)))
            pooled, shapes = pooled_forward(runner, prepared.batch(idx), sites, pooling, maps)
            for site, x in pooled.items():
                if pooling == "all":  # one row per real token: the total is not known in advance
                    chunks[site].append(x if device is None else x.to(device))
                    continue
                if site not in out:
                    out[site] = torch.empty((n, *x.shape[1:]), dtype=x.dtype, device=device or x.device)
                out[site][start : start + len(idx)] = x
            del pooled
    if pooling != "all":
        return {s: out[s].reshape(-1, *shapes[s][1]) for s in sites}
    return {s: torch.cat(c).reshape(-1, *shapes[s][1]) for s, c in chunks.items()}


def collect_activations(
    model: Any,
    prompts: Any,
    sites: SiteSpec = None,
    pooling: Pooling = "mean",
    *,
    batch_size: int = 16,
    maps: Mapping[str, AffineMap] | None = None,
    attention_mask: Tensor | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    pool_bos: bool = False,
    chat: bool = False,
    chat_pool: ChatPool = "user",
) -> dict[str, Float[Tensor, "n ..."]]:
    """Pooled activations of ``model`` on ``prompts`` at each site.

    Args:
        model: a model exposing TransformerLens hook points (``TransformerBridge``,
            ``HookedRootModule``, :class:`lineas_tl.diffusers.HookedPipeline`).
        prompts: strings, conversations (lists of ``{"role", "content"}`` messages, rendered with
            the tokenizer's chat template), or token ids (list of lists, or a ``[batch, pos]``
            tensor with ``attention_mask``); for a diffusion pipeline, text prompts.
        sites: hook names, a regex or a predicate (see :func:`lineas_tl.sites.resolve_sites`).
        pooling: ``"mean"`` over real tokens, ``"last"`` real token, or ``"all"`` real tokens (one
            row per token). A leading BOS token is left out unless ``pool_bos=True``.
        batch_size: prompts per forward pass.
        maps: optional steering maps active while collecting (to read a steered model).
        device: where the results are kept (CPU by default).
        cache_dir: if given, results are stored there under a key of the model's fingerprint, the
            prompts, sites and pooling, and reused on the next identical call.
        chat: render string prompts as one-message user conversations with the chat template.
        chat_pool: which tokens of a conversation are pooled: ``"user"`` content (default),
            ``"content"`` of every message, or ``"all"`` (see :mod:`lineas_tl.chat`).

    Returns:
        ``site -> [n_prompts, *feature_shape]`` (``[n_tokens, *feature_shape]`` for ``"all"``).

    Example:
        >>> acts = collect_activations(model, ["Hello there", "Hi"], sites=r"blocks\\.0\\.hook_.*_out")
    """
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of {POOLINGS}")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    runner = get_runner(model, pool_bos=pool_bos, chat_pool=chat_pool)
    site_list = resolve_sites(model, sites)
    prompts = as_conversations(prompts, chat)
    prepared = runner.prepare(prompts, attention_mask) if attention_mask is not None else runner.prepare(prompts)
    how = pooling + ("+bos" if pool_bos else "") + (f"+chat-{chat_pool}" if _has_chat(prompts) else "")
    cache_file = _cache_file(cache_dir, model, prompts, site_list, how, maps)
    if cache_file is not None and cache_file.exists():
        return {k: v.to(device) for k, v in load_file(str(cache_file)).items()}
    out = pool_prepared(runner, prepared, site_list, pooling, maps, batch_size, progress, device)
    if cache_file is not None:
        _atomic_save(out, cache_file)
    return out


def _cache_file(
    cache_dir: Any, model: Any, prompts: Any, sites: list[str], pooling: str, maps: Any
) -> Path | None:
    if cache_dir is None:
        return None
    if maps:
        return None  # a steered read depends on the maps' values; never serve it from disk
    key = json.dumps(
        {
            "model": model_fingerprint(model),
            "prompts": [
                p if isinstance(p, str) else [dict(m) for m in p] if is_conversation(p) else torch.as_tensor(p).tolist()
                for p in prompts
            ],
            "sites": sites,
            "pooling": pooling,
        },
        sort_keys=True,
    )
    return Path(cache_dir) / f"acts-{hashlib.sha256(key.encode()).hexdigest()[:24]}.safetensors"


def _has_chat(prompts: Any) -> bool:
    return isinstance(prompts, (list, tuple)) and any(is_conversation(p) for p in prompts)


def _atomic_save(tensors: dict[str, Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
