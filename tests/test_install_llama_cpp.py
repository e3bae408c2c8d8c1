"""tools/install_llama_cpp.py: the llama.cpp it installs carries no CPU-specific instructions."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "install_llama_cpp.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("install_llama_cpp", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_build_flags_turn_every_x86_extension_off(tool):
    flags = " ".join(tool.FLAGS)
    assert "-DGGML_NATIVE=OFF" in flags
    for name in ("AVX", "AVX2", "AVX512", "AMX_TILE", "AMX_INT8", "FMA", "F16C", "SSE42", "BMI2"):
        assert f"-DGGML_{name}=OFF" in flags


def test_the_wheel_is_cached_under_a_name_keyed_by_the_flags(tool, monkeypatch, tmp_path):
    monkeypatch.setenv("LINEAS_TL_CACHE", str(tmp_path))
    first = tool.wheel_dir()
    assert first.parent == tmp_path / "wheels" and tool.VERSION in first.name
    monkeypatch.setattr(tool, "FLAGS", [*tool.FLAGS, "-DGGML_AVX2=ON"])
    assert tool.wheel_dir() != first  # another build never reuses this one's wheel


def test_the_check_spots_a_native_build_in_the_system_info(tool):
    native = ("CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | AVX512 = 1 | "
              "AVX512_VNNI = 1 | AMX_INT8 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 |")
    portable = "CPU : LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 |"
    assert set(tool.FORBIDDEN.findall(native)) == {"SSE3", "SSSE3", "AVX", "AVX2", "F16C", "FMA", "BMI2", "AVX512",
                                                  "AVX512_VNNI", "AMX_INT8"}
    assert tool.FORBIDDEN.findall(portable) == []


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="needs llama-cpp-python")
def test_the_installed_llama_cpp_is_the_portable_build():
    done = subprocess.run([sys.executable, str(TOOL), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "AVX512 = 1" not in done.stdout and "AMX" not in done.stdout
