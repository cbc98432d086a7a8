"""The package's import graph: no cycles, and imports flow only down the layers.

Every ``import`` / ``from ... import`` inside ``sgdd/`` counts, at module top or inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "sgdd"

# The layer of each top-level part of the package; a module may import only its own layer or lower.
LAYERS = {
    "errors": 0, "config": 0, "io": 0, "runtime": 0, "log": 0, "offline": 0,
    "cache": 1, "models": 2, "metrics": 2,
    "decoding": 3, "reporting": 3,
    "stages": 4,
    "pipeline": 5, "api": 5, "cli": 6, "__init__": 7,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """The sgdd modules ``path`` imports (``from pkg import sub`` counts as importing ``pkg.sub``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "sgdd"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "sgdd":
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.add(sub if sub in known else target)
    return {m for m in out if m in known and m != name}


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in ROOT.rglob("*.py")}
    return {name: imports_of(p, name, set(paths)) for name, p in paths.items()}


def layer(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    assert top in LAYERS, f"{module}: add its top-level part to LAYERS"
    return LAYERS[top]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_the_graph_sees_real_imports(graph):
    # the checks below are only as good as the parser: it must see both kinds of import statement
    assert "sgdd.errors" in graph["sgdd.config"]
    assert any(m.startswith("sgdd.stages") for m in graph["sgdd.cli"])


def test_no_import_cycles(graph):
    assert cycles(graph) == []


def test_imports_only_flow_down(graph):
    upward = [f"{m} -> {d}" for m, deps in sorted(graph.items()) for d in sorted(deps) if layer(d) > layer(m)]
    assert upward == []


def test_the_cache_layer_imports_only_the_bottom_layer(graph):
    bad = [f"{m} -> {d}" for m, deps in graph.items() if m.startswith("sgdd.cache")
           for d in deps if not d.startswith("sgdd.cache") and layer(d) != 0]
    assert bad == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
