"""Install a llama.cpp (llama-cpp-python) that runs on every x86-64 machine.

``pip install llama-cpp-python`` compiles llama.cpp with ``GGML_NATIVE``: for the CPU it is built
on (``-march=native``). A wheel built on a machine with AVX-512 or AMX crashes on one without, and
a natively built wheel crashed on an AMX machine too (issue 17: SIGSEGV in ``decode`` on the
SmolLM2 Q4_1 file). pip caches the built wheel keyed by the source archive, not by ``CMAKE_ARGS``,
so one native build keeps coming back.

This script builds the wheel once with the portable flags below (baseline x86-64: SSE2, no AVX,
no AVX-512, no AMX), with pip's cache off, into lineas-tl's own cache under a name that includes
a hash of the flags, and installs from there (``--force-reinstall``, so a native build already in
the environment is replaced). It then reads ``llama_print_system_info()`` in a child process and
fails if any instruction set beyond the baseline is compiled in.

    python tools/install_llama_cpp.py            # build if needed, install, check
    python tools/install_llama_cpp.py --check    # only the check

The build takes about 6 minutes on 2 cores (measured, README); later installs take seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VERSION = "0.3.36"
# Every x86 instruction-set option of ggml's CPU backend, off: the compiler's default target
# (x86-64, SSE2) is the only one used. GGML_NATIVE=OFF alone would still turn AVX2/FMA/F16C on.
FLAGS = [
    "-DGGML_NATIVE=OFF",
    "-DGGML_CPU_ALL_VARIANTS=OFF",
    "-DGGML_BACKEND_DL=OFF",
    *(
        f"-DGGML_{name}=OFF"
        for name in (
            "SSE42", "AVX", "AVX_VNNI", "AVX2", "BMI2", "FMA", "F16C",
            "AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16",
            "AMX_TILE", "AMX_INT8", "AMX_BF16",
        )
    ),
]
# Features that llama_print_system_info() reports as "NAME = 1" when compiled in.
FORBIDDEN = re.compile(r"\b(S?SSE[34]\w*|AVX\w*|AMX\w*|FMA|F16C|BMI2)\s*=\s*1")
SYSTEM_INFO = "import llama_cpp; print(llama_cpp.llama_print_system_info().decode())"


def cache_root() -> Path:
    """``$LINEAS_TL_CACHE`` or ``~/.cache/lineas-tl`` (the library's own cache)."""
    env = os.environ.get("LINEAS_TL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "lineas-tl"


def wheel_dir() -> Path:
    """Where the portable wheel lives: keyed by the version and a hash of the build flags."""
    key = hashlib.sha256(" ".join(FLAGS).encode()).hexdigest()[:12]
    return cache_root() / "wheels" / f"llama-cpp-python-{VERSION}-portable-{key}"


def pip(*args: str, env: dict[str, str] | None = None) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True, env=env)


def build(target: Path) -> None:
    """Build the wheel with the portable flags into ``target``; nothing half-built is left there."""
    target.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CMAKE_ARGS": " ".join(FLAGS), "FORCE_CMAKE": "1"}
    start = time.monotonic()
    tmp = tempfile.mkdtemp(dir=target.parent, prefix=".building-")
    try:
        pip("wheel", "--no-cache-dir", "--no-deps", "--no-binary", "llama-cpp-python",
            f"llama-cpp-python=={VERSION}", "-w", tmp, env=env)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"built portable llama-cpp-python {VERSION} in {time.monotonic() - start:.0f} s -> {target}")


def check() -> str:
    """Read the installed build's system info in a child process; raise if it is not portable."""
    run = subprocess.run([sys.executable, "-c", SYSTEM_INFO], capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(
            f"llama_cpp failed to load (exit {run.returncode}):\n{run.stderr[-2000:]}\n"
            "Reinstall it with: python tools/install_llama_cpp.py"
        )
    info = run.stdout.strip()
    found = sorted(set(FORBIDDEN.findall(info)))
    if found:
        raise SystemExit(
            f"the installed llama.cpp is compiled for {', '.join(found)}: it may crash on another "
            f"CPU.\nsystem info: {info}\nReinstall the portable build: python tools/install_llama_cpp.py"
        )
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check the installed build")
    args = parser.parse_args()
    if not args.check:
        target = wheel_dir()
        if not any(target.glob("llama_cpp_python-*.whl")):
            shutil.rmtree(target, ignore_errors=True)
            build(target)
        links = ["--no-cache-dir", "--find-links", str(target), "--only-binary", "llama-cpp-python"]
        pip("install", *links, f"llama-cpp-python=={VERSION}")  # its pure-Python dependencies
        pip("install", *links, "--no-index", "--no-deps", "--force-reinstall", f"llama-cpp-python=={VERSION}")
    print("llama.cpp system info:", check())


if __name__ == "__main__":
    main()
