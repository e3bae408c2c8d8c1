"""A native crash in a child process is an error in the parent, with its cause named."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from lineas_tl.export import llama_cpp
from lineas_tl.export.child import NativeCrash, run_child, signal_name

ABORT = [sys.executable, "-c", "import os; os.abort()"]


def test_a_child_that_aborts_raises_native_crash_naming_the_signal_and_the_context():
    with pytest.raises(NativeCrash) as err:
        run_child(ABORT, what="the test's child", context=lambda: "build: CPU : SSE2 = 1")
    message = str(err.value)
    assert "SIGABRT (6)" in message and "the test's child" in message and "build: CPU : SSE2 = 1" in message


def test_a_failing_child_names_its_exit_code_and_stderr_and_a_good_one_returns():
    with pytest.raises(NativeCrash, match=r"exit code 3(.|\n)*no such model"):
        run_child([sys.executable, "-c", "import sys; print('no such model', file=sys.stderr); sys.exit(3)"], what="x")
    assert run_child([sys.executable, "-c", "print('fine')"], what="x").stdout.strip() == "fine"


def test_a_context_that_fails_does_not_hide_the_crash():
    def broken() -> str:
        raise OSError("cannot read")

    with pytest.raises(NativeCrash, match="SIGABRT(.|\n)*could not read the context: cannot read"):
        run_child(ABORT, what="x", context=broken)


def test_signal_names():
    assert signal_name(-11) == "SIGSEGV (11)" and signal_name(-999) == "signal 999"


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="needs llama-cpp-python")
def test_llama_cpp_crash_names_the_model_file_and_the_build_flags(monkeypatch, tmp_path):
    """The real llama.cpp runner, with its child replaced by one that aborts: the message carries
    the signal, the file and llama_print_system_info() (read in a second, healthy child)."""
    monkeypatch.setattr(llama_cpp, "_child_argv", lambda request, out: ABORT)
    model = tmp_path / "model.gguf"
    with pytest.raises(NativeCrash) as err:
        llama_cpp.logits(model, [[1, 2, 3]])
    message = str(err.value)
    assert "SIGABRT" in message and str(model) in message
    assert "llama.cpp build:" in message and "CPU" in message
