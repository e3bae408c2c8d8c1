"""Save a fitted steerer to a directory and load it back onto a model.

A saved steerer is a directory of two files:

``maps.safetensors``
    every map's parameters, keys ``"{site}.weight"`` (:math:`\\omega`) and ``"{site}.bias"``
    (:math:`b`), in the maps' own dtype: a round trip is bit-exact. A map with a support range
    (Linear-AcT) adds ``"{site}.lo"`` and ``"{site}.hi"``; steerers saved without them load unchanged.
``steerer.json``
    what is needed to rebuild and check it: format version, lineas-tl version, method,
    hyper-parameters, sites, pooling, each map's ``feature_shape`` / ``feature_axis`` / ``kind``, the
    SHA-256 of ``maps.safetensors``, the fitted model's class and fingerprint (architecture and
    weights, see :mod:`lineas_tl.fingerprint`), a JSON-safe copy of the fitting history, and the
    calibration (``calibration``: strength, budget, measured perplexities; null if not calibrated).

Writing is atomic: both files go to a hidden temporary directory next to the target, which is then
renamed into place, so an interrupted save never leaves a half-written steerer at the path (an
existing steerer there is kept until the new one is complete). Loading checks, in order: that the
files exist and agree (checksum), that every site exists on the model and has the saved width, and
that the model's architecture fingerprint matches (an error) and its weights fingerprint (a warning:
the same shape of model with other weights, e.g. a fine-tune).

Example:
    >>> steerer.save("steerers/detox")
    >>> same = HookedSteerer.load("steerers/detox", model)
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lineas_tl.calibrate import Calibration
from lineas_tl.fingerprint import model_fingerprint
from lineas_tl.gate.store import gate_from, gate_tensors
from lineas_tl.maps import AffineMap
from lineas_tl.runner import model_device
from lineas_tl.io_checks import SteererMismatchError, check_sites, check_widths, describe_model

if TYPE_CHECKING:
    from lineas_tl.protocols import SteererLike as HookedSteerer

FORMAT = "lineas-tl steerer"
FORMAT_VERSION = 4
"""1: the first releases. 2: adds ``chat_pool``, ``model.name`` (what :func:`lineas_tl.models.load`
was given, the CLI's default ``--model`` for this steerer) and ``hparams_given``; ``hparams`` holds
every hyper-parameter the method used, defaults included (format 1: only those the user passed).
Format 1 steerers load unchanged (``chat_pool="user"``, the only behaviour then).
3: adds the gate (``"gate"`` in the JSON, ``gate.*`` tensors; see :mod:`lineas_tl.gate.store`);
formats 1 and 2 load with ``gate_ = None``.
4: the gate's options add ``shared`` and ``hard`` (:mod:`lineas_tl.gate.shared`), and the model's
weights fingerprint is read without a float reduction (``weights_scheme`` 2). Earlier weights
fingerprints summed each tensor, which changes with the thread count and device, so they are not
compared on load (the architecture fingerprint still is)."""
MAPS_FILE = "maps.safetensors"
META_FILE = "steerer.json"

__all__ = [
    "FORMAT_VERSION",
    "MAPS_FILE",
    "META_FILE",
    "SteererFormatError",
    "SteererMismatchError",
    "load_steerer",
    "read_metadata",
    "save_steerer",
]


class SteererFormatError(ValueError):
    """A directory that is not a complete, readable saved steerer."""


# --------------------------------------------------------------------------- saving
def save_steerer(steerer: HookedSteerer, path: str | os.PathLike[str]) -> Path:
    """Write ``steerer`` to the directory ``path`` atomically; returns the path.

    An existing saved steerer (or an empty directory) at ``path`` is replaced only once the new one
    is completely written. Any other existing file or non-empty directory is left alone and raises
    ``FileExistsError``, so a typo cannot delete unrelated data.
    """
    if not getattr(steerer, "maps_", None):
        from lineas_tl.steerer_support import NotFittedError

        raise NotFittedError("this steerer is not fitted: nothing to save")
    target = Path(path).expanduser()
    _check_replaceable(target)
    target.parent.mkdir(parents=True, exist_ok=True)

    tensors: dict[str, torch.Tensor] = {}
    maps_meta: dict[str, dict[str, Any]] = {}
    for site, m in steerer.maps_.items():
        tensors[f"{site}.weight"] = m.weight.detach().cpu().contiguous().clone()
        tensors[f"{site}.bias"] = m.bias.detach().cpu().contiguous().clone()
        maps_meta[site] = {
            "feature_shape": list(m.feature_shape),
            "feature_axis": m.feature_axis,
            "kind": m.kind,
            "dtype": str(m.weight.dtype).removeprefix("torch."),
        }
        if m.n_front is not None:
            maps_meta[site]["n_front"] = m.n_front
        if m.lo is not None and m.hi is not None:  # Linear-AcT's support range (absent: no range)
            tensors[f"{site}.lo"] = m.lo.detach().cpu().contiguous().clone()
            tensors[f"{site}.hi"] = m.hi.detach().cpu().contiguous().clone()

    gate_t, gate_meta = gate_tensors(getattr(steerer, "gate_", None))
    tensors.update(gate_t)
    calibration = getattr(steerer, "calibration_", None)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp creates 0700; a shared steerer should be readable
        maps_file = tmp / MAPS_FILE
        save_file(tensors, str(maps_file), metadata={"format": FORMAT})
        with open(maps_file, "rb") as fh:  # on disk before the rename makes it visible
            os.fsync(fh.fileno())
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "lineas_tl_version": _version(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "class": type(steerer).__name__,
            "method": getattr(steerer, "method_", None),
            "hparams": _json_safe(getattr(steerer, "hparams_", {})),
            "hparams_given": _json_safe(getattr(steerer, "hparams_given_", None)),
            "pooling": steerer.pooling,
            "pool_bos": steerer.pool_bos,
            "chat_pool": getattr(steerer, "chat_pool", "user"),
            "sites": list(steerer.sites),
            "maps": maps_meta,
            "maps_sha256": _sha256(maps_file),
            "model": {
                "class": type(steerer.model).__name__,
                "name": model_name(steerer.model),
                "description": describe_model(steerer.model),
                "fingerprint": model_fingerprint(steerer.model),
            },
            "history": _json_safe(getattr(steerer, "history_", {})),
            "calibration": calibration.to_dict() if calibration is not None else None,
            "gate": gate_meta,
        }
        with open(tmp / META_FILE, "w", encoding="utf-8") as fh:
            json.dump(meta, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        _move_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _check_replaceable(target: Path) -> None:
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise FileExistsError(f"{target} exists and is not a directory; choose another path")
    if target.is_dir() and any(target.iterdir()) and not (target / META_FILE).is_file():
        raise FileExistsError(
            f"{target} is a non-empty directory that is not a saved steerer; refusing to replace it. "
            "Choose a new path or remove it yourself."
        )


def _move_into_place(tmp: Path, target: Path) -> None:
    """Rename the complete ``tmp`` to ``target``, replacing an existing steerer without a gap."""
    if not target.exists():
        os.rename(tmp, target)
        return
    if not any(target.iterdir()):
        os.replace(tmp, target)  # POSIX rename replaces an empty directory atomically
        return
    # A directory cannot be atomically replaced by a non-empty one: move the old one aside first.
    # Were we killed between the two renames, the old steerer survives in ``old``, the new one in
    # ``tmp``, and nothing half-written is ever at ``target``.
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.rmdir(old)
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- loading
def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate ``steerer.json`` of a saved steerer (does not touch the maps or a model).

    Raises:
        FileNotFoundError: no directory at ``path``.
        SteererFormatError: not a saved steerer, incomplete, corrupt, or from a newer format.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"no saved steerer at {root}: the path does not exist")
    if not root.is_dir():
        raise SteererFormatError(f"{root} is a file; a saved steerer is a directory (see HookedSteerer.save)")
    meta_file, maps_file = root / META_FILE, root / MAPS_FILE
    missing = [f.name for f in (meta_file, maps_file) if not f.is_file()]
    if missing:
        raise SteererFormatError(
            f"{root} is not a complete saved steerer: missing {', '.join(missing)}. "
            "Save it again with steerer.save(path)."
        )
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SteererFormatError(f"{meta_file} is corrupt ({err}); save the steerer again") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise SteererFormatError(f"{meta_file} is not a lineas-tl steerer description")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise SteererFormatError(
            f"{root} was saved in steerer format {version!r} by lineas-tl "
            f"{meta.get('lineas_tl_version')}; this lineas-tl ({_version()}) reads format "
            f"<= {FORMAT_VERSION}: upgrade lineas-tl"
        )
    for key, kind in (("maps", dict), ("sites", list), ("pooling", str), ("model", dict)):
        if not isinstance(meta.get(key), kind):
            raise SteererFormatError(f"{meta_file} has no valid {key!r} entry; save the steerer again")
    return meta


def load_steerer(
    cls: type[HookedSteerer],
    path: str | os.PathLike[str],
    model: Any,
    *,
    strict: bool = True,
) -> HookedSteerer:
    """Load the steerer saved at ``path`` onto ``model``; returns a fitted ``cls`` instance.

    Args:
        cls: the steerer class to build (``HookedSteerer`` or a subclass).
        path: a directory written by :func:`save_steerer`.
        model: the model to steer; maps are placed on its device.
        strict: a different architecture fingerprint (other parameter names or shapes) is an error
            when True, a warning when False. Missing sites and different widths are always errors.

    Raises:
        FileNotFoundError, SteererFormatError: ``path`` is not a complete, uncorrupted steerer.
        SteererMismatchError: a site is missing on ``model``, a width differs, or (``strict``) the
            architecture differs. The message names the site and both shapes.

    Warns:
        UserWarning: same architecture, different weights (the steerer was fitted on another model
        of the same shape).
    """
    meta = read_metadata(path)
    root = Path(path).expanduser()
    maps_file = root / MAPS_FILE
    if meta.get("maps_sha256") and _sha256(maps_file) != meta["maps_sha256"]:
        raise SteererFormatError(
            f"{maps_file} does not match {META_FILE} (checksum differs): the directory is corrupt or "
            "mixes two saves; save the steerer again"
        )
    try:
        tensors = load_file(str(maps_file))
    except (SafetensorError, OSError, ValueError) as err:
        raise SteererFormatError(f"{maps_file} cannot be read ({err}); save the steerer again") from err

    saved_model = meta["model"]
    fitted_on = str(saved_model.get("description") or saved_model.get("class", "?"))
    check_sites(meta, model, fitted_on)
    fp_now = model_fingerprint(model)
    fp_saved = saved_model.get("fingerprint") or {}
    arch_differs = fp_saved.get("architecture") not in (None, fp_now["architecture"])
    if arch_differs:
        check_widths(meta, model, fitted_on)  # a width mismatch is the most useful message: try it first
        msg = (
            f"the steerer at {root} was fitted on a model of another architecture ({fitted_on}, "
            f"architecture fingerprint {fp_saved.get('architecture')}; this model: "
            f"{describe_model(model)}, {fp_now['architecture']}). Its sites and widths exist here, "
            "but its parameter names or shapes differ."
        )
        if strict:
            raise SteererMismatchError(
                msg + " Load onto the model it was fitted on, or call "
                "lineas_tl.io.load_steerer(HookedSteerer, path, model, strict=False) to load anyway."
            )
        warnings.warn(msg, UserWarning, stacklevel=3)
    elif fp_saved.get("weights_scheme") == fp_now.get("weights_scheme") and fp_saved.get("weights") != fp_now["weights"]:
        warnings.warn(
            f"the steerer at {root} was fitted on a model with the same architecture but other "
            f"weights (saved weights fingerprint {fp_saved.get('weights')}, this model "
            f"{fp_now['weights']}); its maps may not transfer",
            UserWarning,
            stacklevel=3,
        )

    device = model_device(model)
    maps: dict[str, AffineMap] = {}
    for site, info in meta["maps"].items():
        shape = tuple(int(s) for s in info["feature_shape"])
        try:
            weight, bias = tensors[f"{site}.weight"], tensors[f"{site}.bias"]
        except KeyError as err:
            raise SteererFormatError(f"{maps_file} has no tensor {err.args[0]!r}; save the steerer again") from err
        n_front = info.get("n_front")
        bias_shape = (int(n_front), *shape) if n_front is not None else shape
        if tuple(weight.shape) != shape or tuple(bias.shape) != bias_shape:
            raise SteererFormatError(
                f"{maps_file}: tensors of site {site!r} have shapes {tuple(weight.shape)} / "
                f"{tuple(bias.shape)}, the description says {shape} / {bias_shape}; save the steerer again"
            )
        m = AffineMap(shape, int(info.get("feature_axis", 2)), kind=info.get("kind", "affine"), n_front=n_front)
        m.weight.data = weight.to(device)
        m.bias.data = bias.to(device)
        if f"{site}.lo" in tensors and f"{site}.hi" in tensors:
            m.set_range(tensors[f"{site}.lo"].to(device), tensors[f"{site}.hi"].to(device))
        m.requires_grad_(False)
        maps[site] = m

    steerer = cls(
        model,
        sites=meta["sites"] or list(maps),
        pooling=meta["pooling"],
        pool_bos=bool(meta.get("pool_bos", False)),
        chat_pool=meta.get("chat_pool", "user"),
    )
    steerer.maps_ = maps
    steerer.method_ = meta.get("method")
    steerer.hparams_ = dict(meta.get("hparams") or {})
    steerer.history_ = dict(meta.get("history") or {})
    try:
        steerer.gate_ = gate_from(tensors, meta.get("gate"), device)
    except (KeyError, TypeError, ValueError) as err:
        raise SteererFormatError(f"{maps_file}: the gate cannot be read ({err!r}); save the steerer again") from err
    given = meta.get("hparams_given") if meta.get("format_version", 1) >= 2 else meta.get("hparams")
    steerer.hparams_given_ = dict(given) if isinstance(given, dict) else {}
    steerer.calibration_, steerer.calibrated_strength_ = None, None
    if meta.get("calibration") is not None:
        try:
            record = Calibration.from_dict(meta["calibration"])
        except ValueError as err:
            raise SteererFormatError(f"{root / META_FILE}: {err}") from err
        steerer.calibration_, steerer.calibrated_strength_ = record, record.strength
    return steerer


# --------------------------------------------------------------------------- helpers
def model_name(model: Any) -> str | None:
    """What :func:`lineas_tl.models.load` was given for ``model`` (a name, a directory or a GGUF
    file), or None for a model built another way."""
    from lineas_tl.models import NAME_ATTR

    name = getattr(model, NAME_ATTR, None)
    return str(name) if name is not None else None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _version() -> str:
    from lineas_tl.version import __version__

    return __version__


def _json_safe(obj: Any, _depth: int = 0) -> Any:
    """A JSON-serialisable copy of ``obj``: containers kept, tensors/arrays as lists, others as repr."""
    if _depth > 20:
        return repr(obj)
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else repr(obj)
    if isinstance(obj, dict):
        return {str(k): _json_safe(v, _depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v, _depth + 1) for v in obj]
    if isinstance(obj, torch.Tensor):
        if obj.numel() <= 100_000:
            return _json_safe(obj.detach().cpu().tolist(), _depth + 1)
        return f"<tensor of shape {tuple(obj.shape)}, not saved>"
    if hasattr(obj, "tolist") and hasattr(obj, "dtype"):  # numpy arrays and scalars
        return _json_safe(obj.tolist(), _depth + 1)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return repr(obj)
