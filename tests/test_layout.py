"""The library's shape: no import cycle (function-level imports included), hub knows nothing of
pools, and every error class lives in errors.py."""

from __future__ import annotations

import ast
from pathlib import Path

import tgr_hub.errors

PACKAGE = Path(tgr_hub.errors.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """``module -> modules of tgr_hub it imports``, anywhere in the file (functions, TYPE_CHECKING too)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                subs = [f"{module}.{alias.name}" for alias in node.names]
                # `from pkg import submodule` needs the submodule; the package only for other names
                targets = subs + ([module] if any(s not in modules for s in subs) else [])
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    assert "tgr_hub.hub" in graph["tgr_hub.pool"]  # the graph sees the imports (pool -> hub, the one direction)
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_planted_cycle() -> None:
    graph = import_graph()
    graph["tgr_hub.hub.resolve"].add("tgr_hub.pool")  # what hub -> pool used to be
    assert ["tgr_hub.hub", "tgr_hub.hub.resolve", "tgr_hub.pool"] in _cycles(graph)


def test_hub_takes_plain_values() -> None:
    graph = import_graph()
    for name in ("tgr_hub.hub", "tgr_hub.hub.client", "tgr_hub.hub.resolve", "tgr_hub.hub.push"):
        assert "tgr_hub.pool" not in graph[name], name


def test_every_error_class_is_defined_in_errors_py() -> None:
    strays = []
    for name, path in _modules().items():
        if name == "tgr_hub.errors":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and (node.name.endswith("Error") or node.name.endswith("Exception")):
                strays.append(f"{name}.{node.name}")
    assert strays == []
