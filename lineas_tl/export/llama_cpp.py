"""Run an exported GGUF in llama.cpp (llama-cpp-python), always in a child process.

A llama.cpp compiled for another CPU than the one it runs on can crash the interpreter (issue 17:
a natively built wheel segfaulted in ``decode`` on a machine with AMX). Every call here therefore
runs llama.cpp in a child (``python -m lineas_tl.export.llama_cpp``): a crash raises
:class:`~lineas_tl.export.child.NativeCrash` naming the signal, the model file and llama.cpp's build
flags (``llama_print_system_info()``), and the caller goes on. ``tools/install_llama_cpp.py``
installs a build that runs on every x86-64.

Example:
    >>> rows = logits("detox.gguf", [[1, 504, 3260, 314]])   # [positions, vocab] per sequence
    >>> print(system_info())
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lineas_tl.export.child import NativeCrash, run_child

_SYSTEM_INFO = "import llama_cpp; print(llama_cpp.llama_print_system_info().decode())"


def system_info() -> str:
    """llama.cpp's ``llama_print_system_info()`` (its compiled-in CPU features), read in a child."""
    return run_child([sys.executable, "-c", _SYSTEM_INFO], what="llama_cpp.llama_print_system_info()",
                     timeout=120).stdout.strip()


def _build_flags() -> str:
    try:
        return f"llama.cpp build: {system_info()}"
    except NativeCrash as exc:
        return f"llama.cpp build: unknown ({exc})"


def _child_argv(request: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "lineas_tl.export.llama_cpp", str(request), str(out)]


def logits(
    model: str | os.PathLike[str],
    sequences: Sequence[Sequence[int]],
    *,
    control_vector: str | os.PathLike[str] | None = None,
    n_ctx: int | None = None,
    n_threads: int = 1,
    timeout: float | None = 600,
) -> list[np.ndarray]:
    """llama.cpp's logits at every position of each token sequence, computed in a child process.

    Args:
        model: a GGUF model file.
        sequences: token ids, each evaluated from an empty context (include the BOS if the model
            expects one: llama.cpp adds none here).
        control_vector: a llama.cpp control-vector GGUF, applied to every layer it has a direction
            for, as llama.cpp's own ``--control-vector`` loader does.
        n_ctx: context size (default: the longest sequence).
        n_threads: llama.cpp's threads.
        timeout: seconds before the child is killed.

    Returns:
        one float32 array ``[len(sequence), n_vocab]`` per sequence.

    Raises:
        NativeCrash: llama.cpp crashed or failed in the child (the message names the signal, the
            model file and the build's CPU features).
    """
    return _in_child(model, sequences, control_vector, 0, n_ctx, n_threads, timeout)


def greedy(
    model: str | os.PathLike[str],
    sequences: Sequence[Sequence[int]],
    n_new: int,
    *,
    control_vector: str | os.PathLike[str] | None = None,
    n_threads: int = 1,
    timeout: float | None = 600,
) -> list[list[int]]:
    """llama.cpp's greedy continuation (``n_new`` tokens, no stop at EOS) of each token sequence,
    computed in a child process; arguments and errors as in :func:`logits`."""
    rows = _in_child(model, sequences, control_vector, n_new, None, n_threads, timeout)
    return [r.astype(int).tolist() for r in rows]


def _in_child(
    model: str | os.PathLike[str],
    sequences: Sequence[Sequence[int]],
    control_vector: str | os.PathLike[str] | None,
    n_new: int,
    n_ctx: int | None,
    n_threads: int,
    timeout: float | None,
) -> list[np.ndarray]:
    seqs = [[int(t) for t in s] for s in sequences]
    request = {
        "model": str(Path(model).resolve()),
        "control_vector": str(Path(control_vector).resolve()) if control_vector is not None else None,
        "sequences": seqs,
        "greedy": int(n_new),
        "n_ctx": int(n_ctx or max(len(s) for s in seqs) + int(n_new)),
        "n_threads": int(n_threads),
    }
    what = f"llama.cpp on {request['model']}" + (f" with {control_vector}" if control_vector else "")
    with tempfile.TemporaryDirectory(prefix="lineas-tl-llama-") as tmp:
        req, out = Path(tmp) / "request.json", Path(tmp) / "out.npz"
        req.write_text(json.dumps(request))
        run_child(_child_argv(req, out), what=what, context=_build_flags, timeout=timeout)
        with np.load(out) as data:
            return [data[f"seq{i}"] for i in range(len(seqs))]


def _set_control_vector(llm: object, path: str) -> np.ndarray:
    """Load ``direction.k`` tensors into llama.cpp's control-vector slots (layers 1..n-1)."""
    import gguf
    from llama_cpp import llama_cpp as lib

    n_embd, n_layer = llm.n_embd(), int(lib.llama_model_n_layer(llm.model))
    data = np.zeros((n_layer - 1) * n_embd, dtype=np.float32)  # llama.cpp's buffer starts at layer 1
    for t in gguf.GGUFReader(path).tensors:
        layer = int(t.name.removeprefix("direction."))
        if layer < 1 or t.data.shape != (n_embd,):
            raise ValueError(f"{path}: tensor {t.name} of shape {t.data.shape} is not a control direction")
        data[(layer - 1) * n_embd : layer * n_embd] = t.data
    ptr = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    if lib.llama_set_adapter_cvec(llm.ctx, ptr, data.size, n_embd, 1, n_layer - 1) != 0:
        raise RuntimeError(f"llama.cpp refused the control vector {path}")
    return data  # the caller keeps it alive as long as the context


def _main(request_path: str, out_path: str) -> None:
    from llama_cpp import Llama

    request = json.loads(Path(request_path).read_text())
    llm = Llama(model_path=request["model"], logits_all=True, n_ctx=request["n_ctx"], verbose=False,
                n_threads=request["n_threads"], seed=0)
    try:
        keep = _set_control_vector(llm, request["control_vector"]) if request["control_vector"] else None
        rows = {}
        for i, seq in enumerate(request["sequences"]):
            if request["greedy"]:
                new = []
                for tok in llm.generate(seq, temp=0.0, top_k=1, reset=True):
                    new.append(int(tok))
                    if len(new) == request["greedy"]:
                        break
                rows[f"seq{i}"] = np.array(new, dtype=np.int64)
            else:
                llm.reset()
                llm.eval(seq)
                rows[f"seq{i}"] = np.array(llm.scores[: len(seq)], dtype=np.float32)
        np.savez(out_path, **rows)
        del keep
    finally:
        llm.close()


__all__ = ["NativeCrash", "greedy", "logits", "system_info"]

if __name__ == "__main__":
    _main(*sys.argv[1:3])
