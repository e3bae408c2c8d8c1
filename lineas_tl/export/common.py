"""What every exporter shares: the strength to export at, the record of the steerer, atomic writes."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from lineas_tl.fold import FoldError, Steerable, map_refusal, site_strengths

__all__ = [
    "ExportError",
    "active_strengths",
    "atomic_path",
    "check_new_path",
    "clean_key",
    "record_json",
    "resolve_strength",
    "steerer_record",
]


class ExportError(FoldError):
    """The steerer cannot be written in the requested format (the message names an alternative)."""


def resolve_strength(
    steerer: Steerable, strength: float | str | Mapping[str, float], inverse: bool = False
) -> float | Mapping[str, float]:
    """``strength`` as :meth:`HookedSteerer.steer` takes it; ``"calibrated"`` reads ``calibrated_strength_``."""
    from lineas_tl.calibrate import resolve_strength as resolve

    return resolve(steerer, strength, inverse)  # type: ignore[arg-type,no-any-return]


def active_strengths(
    steerer: Steerable, strength: float | str | Mapping[str, float], *, inverse: bool = False
) -> dict[str, float]:
    """``{site: strength}`` for the maps that change anything at this strength (non-zero, not identity).

    Raises:
        FoldError: a map acts on some tokens only (support range, position scope).
    """
    per_site = site_strengths(steerer, resolve_strength(steerer, strength, inverse), inverse=inverse)
    active = {s: v for s, v in per_site.items() if v != 0.0 and not steerer.maps_[s].is_identity()}
    refused = {s: why for s in active if (why := map_refusal(steerer.maps_[s])) is not None}
    if refused:
        listing = "; ".join(f"{s}: {why}" for s, why in refused.items())
        raise FoldError(
            f"cannot write {len(refused)} map(s) into a model file, which acts on every token alike: "
            f"{listing}. Serve this steerer with hooks (steerer.steer()) instead."
        )
    return active


def steerer_record(steerer: Any, strength: Any, inverse: bool, fmt: str) -> dict[str, Any]:
    """What was exported: method, hyper-parameters, strength, sites, the fitted model's fingerprint."""
    from lineas_tl.fingerprint import model_fingerprint
    from lineas_tl.version import __version__

    resolved = resolve_strength(steerer, strength, inverse)
    return {
        "format": fmt,
        "method": getattr(steerer, "method_", None),
        "hparams": json.loads(json.dumps(getattr(steerer, "hparams_", {}), default=repr)),
        "strength": dict(resolved) if isinstance(resolved, Mapping) else float(resolved),
        "strength_requested": strength if isinstance(strength, str) else None,
        "inverse": bool(inverse),
        "sites": list(steerer.maps_),
        "fingerprint": model_fingerprint(steerer.model),
        "lineas_tl_version": __version__,
    }


def clean_key(key: str) -> str:
    """A bridge-wrapped Hugging Face parameter or module name back to the plain model's name."""
    return key.replace("._original_component", "").replace("_original_component.", "")


def record_json(record: Mapping[str, Any]) -> str:
    """The record as one JSON string (sorted keys)."""
    return json.dumps(record, sort_keys=True)


def check_new_path(path: str | os.PathLike[str], *, protect: Path | None = None) -> Path:
    """``path`` as a new file to write: an error if it exists or is the source we read from."""
    target = Path(path).expanduser()
    if protect is not None and target.resolve() == protect.resolve():
        raise FileExistsError(f"{target} is the source GGUF: exports never modify it; choose a new path")
    if target.exists():
        raise FileExistsError(f"{target} exists; choose a new path (exports never overwrite)")
    return target


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """A temporary path next to ``target``; renamed onto it when the block succeeds, removed otherwise."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
