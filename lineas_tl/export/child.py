"""Run native code in a child process, so that a crash there is an error here, not the end of Python.

A C extension that segfaults takes its interpreter with it: a test run stops at that test, a
notebook's kernel dies. llama.cpp built for another CPU than the one it runs on does exactly that
(issue 17: ``SIGSEGV`` in ``decode`` on a machine with AMX). :func:`run_child` runs a command, and
when the child dies of a signal raises :class:`NativeCrash` naming the signal, what was being run
and whatever the caller adds (for llama.cpp: its build flags, read in a separate child).
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Sequence


class NativeCrash(RuntimeError):
    """A child process running native code died of a signal (or failed)."""


def signal_name(returncode: int) -> str:
    """``"SIGSEGV (11)"`` for a child killed by signal 11 (a negative return code)."""
    try:
        return f"{signal.Signals(-returncode).name} ({-returncode})"
    except ValueError:
        return f"signal {-returncode}"


def run_child(
    argv: Sequence[str],
    *,
    what: str,
    context: Callable[[], str] | None = None,
    timeout: float | None = 600,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv``; return the completed process when it exits 0.

    Args:
        argv: the command (e.g. ``[sys.executable, "-m", "some.module", ...]``).
        what: what the child runs, for the message (e.g. the model file).
        context: called only after a failure; its text is added to the message (e.g. build flags).
        timeout: seconds before the child is killed (None: no limit).

    Raises:
        NativeCrash: the child died of a signal, exited non-zero or timed out. The message names the
            signal or exit code, ``what``, the end of the child's stderr and ``context()``.
    """
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise NativeCrash(f"{what}: the child process did not finish within {timeout} s") from exc
    if done.returncode == 0:
        return done
    cause = (
        f"crashed with {signal_name(done.returncode)}"
        if done.returncode < 0
        else f"failed with exit code {done.returncode}"
    )
    parts = [f"{what}: the child process {cause}."]
    if done.stderr.strip():
        parts.append("Its stderr ended with:\n" + done.stderr.strip()[-1500:])
    if context is not None:
        try:
            parts.append(context())
        except Exception as exc:  # the context is a courtesy; never hide the crash behind it
            parts.append(f"(could not read the context: {exc})")
    raise NativeCrash("\n".join(parts))


__all__ = ["NativeCrash", "run_child", "signal_name"]
