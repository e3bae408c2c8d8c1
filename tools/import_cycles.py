"""Check that the modules of ``lineas_tl`` import one another without a cycle.

Every ``import`` counts, wherever it is written: at module level, under ``if TYPE_CHECKING:`` and
inside functions (a lazy import still ties the two modules together). Importing the package root
``lineas_tl`` itself is not an edge (it runs before any submodule anyway); a name taken from it
(``from lineas_tl import HookedSteerer``) is an edge to the module that defines the name. A
submodule taken from a subpackage (``from lineas_tl.concepts import text``) is an edge to both.

    python tools/import_cycles.py          # prints the cycles, exits 1 if there is one
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "lineas_tl"


def modules(root: Path = ROOT) -> dict[str, Path]:
    out = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _root_names(mods: dict[str, Path]) -> dict[str, str]:
    """Names the root package re-exports -> the module they come from."""
    names: dict[str, str] = {}
    tree = ast.parse(mods["lineas_tl"].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lineas_tl."):
            for alias in node.names:
                names[alias.asname or alias.name] = node.module
    return names


def graph(mods: dict[str, Path] | None = None) -> dict[str, set[str]]:
    """``module -> modules it imports`` within ``lineas_tl``."""
    mods = mods or modules()
    root_names = _root_names(mods)
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                for alias in node.names:
                    if base == "lineas_tl" and alias.name in root_names:
                        targets.append(root_names[alias.name])
                    elif f"{base}.{alias.name}" in mods:  # a submodule: its package's __init__ runs first
                        targets += [f"{base}.{alias.name}", base]
                    else:
                        targets.append(base)
            for t in targets:
                while t and t not in mods:
                    t = t.rsplit(".", 1)[0] if "." in t else ""
                if t and t != "lineas_tl" and t != name:
                    edges[name].add(t)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    sys.setrecursionlimit(10_000)

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def main() -> int:
    found = cycles(graph())
    for comp in found:
        print("import cycle:", " <-> ".join(comp))
    if not found:
        print(f"no import cycle among {len(modules())} modules of lineas_tl")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
