"""The steerer's collaborators take its public surface (a Protocol) instead of importing it back."""

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("import_cycles", Path(__file__).parents[1] / "tools" / "import_cycles.py")
import_cycles = importlib.util.module_from_spec(spec)
spec.loader.exec_module(import_cycles)


def test_no_cycle_through_the_steerer():
    edges = import_cycles.graph()
    assert "lineas_tl.calibrate" in edges["lineas_tl.steerer"]  # the graph is read
    for comp in import_cycles.cycles(edges):
        touched = [m for m in comp if m.split(".")[1] in ("steerer", "calibrate", "io", "export", "evaluate", "gate", "fold", "concepts")]
        assert not touched, f"import cycle {comp}"
    for module in ("lineas_tl.calibrate", "lineas_tl.io", "lineas_tl.evaluate.perplexity", "lineas_tl.evaluate.sampling", "lineas_tl.gate.inspect"):
        assert "lineas_tl.steerer" not in edges[module], module


def test_the_cycle_finder_finds_a_cycle():
    assert import_cycles.cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
