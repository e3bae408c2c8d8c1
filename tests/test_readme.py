"""The README's quick starts run, so the front door cannot rot.

Each test takes a ```python block from README.md by the heading above it and runs it in a fresh
interpreter, offline, in a temporary directory. To keep CI short (under a minute or two each on
2 cores), it makes a few documented substitutions first, each of which must match the README
exactly (so an edit to the README that drops one fails here, and this file is updated with it):

- the default fit (up to 300 steps, minutes on a CPU) becomes a 2-step fit;
- fewer fit prompts, calibration texts, calibration steps and generated tokens.

Everything else (imports, the model, the calls and their order) runs as written. The subprocess
timeout is generous because a shared machine is slow: at load average 12 on 2 cores the first block
took over 10 minutes (most of it importing, and Python-bound work starved of CPU).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).parent.parent / "README.md"

QUICK_START = {
    ".fit(source, target)": ".fit(source, target, steps=2)",
    "split(n_fit=32, seed=0)": "split(n_fit=4, seed=0)",
    "reference_text(n=32, seed=0, max_words=64), max_ppl_increase=0.05)": (
        "reference_text(n=4, seed=0, max_words=24), max_ppl_increase=0.05, grid=2, bisect_steps=1)"
    ),
    "max_new_tokens=24": "max_new_tokens=4",
}
OWN_MODEL = {
    ".fit(source, target)": ".fit(source, target, steps=2)",
    "max_new_tokens=20": "max_new_tokens=4",
}


def python_block(heading: str) -> str:
    """The first ```python block under the README's ``## heading``."""
    text = README.read_text(encoding="utf-8")
    section = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert section, f"README.md has no section '## {heading}'"
    block = re.search(r"^```python\n(.*?)^```", section.group(1), re.S | re.M)
    assert block, f"README.md's '## {heading}' has no ```python block"
    return block.group(1)


def quick(code: str, substitutions: dict[str, str]) -> str:
    for old, new in substitutions.items():
        assert old in code, f"the README's block no longer contains {old!r}; update tests/test_readme.py"
        code = code.replace(old, new)
    return code


def run(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MPLBACKEND": "Agg"}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=1500
    )


@pytest.mark.slow
def test_quick_start_runs(tmp_path):
    done = run(quick(python_block("Quick start"), QUICK_START), tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "calibrated strength:" in done.stdout
    assert done.stdout.count("[0.0] ") == 3 and done.stdout.count("[calibrated] ") == 3
    assert (tmp_path / "toxicity-steerer" / "steerer.json").is_file()


@pytest.mark.slow
def test_quick_start_on_your_own_model_runs(tmp_path):
    from lineas_tl import models

    models.load("smollm2-135m")  # the block boots the directory this caches (the first block's job)
    done = run(quick(python_block("Quick start on your own TransformerLens model"), OWN_MODEL), tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sum(line.startswith("The movie was") for line in done.stdout.splitlines()) >= 2


def test_install_commands_are_the_ones_ci_runs():
    """The test command in the README is, character for character, the one CI runs."""
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text(encoding="utf-8")
    commands = re.findall(r"^```bash\n(pip install[^\n]*)\n```", README.read_text(encoding="utf-8"), re.M)
    assert len(commands) == 2
    assert commands[1] in ci.splitlines()
