"""canary_mw's modules import each other without a cycle, so each can be read (and tested)
after the ones it needs. The graph is built from the source with ``ast``: every import at
module level (``if TYPE_CHECKING:`` blocks included: a cycle for the type checker is one for
the reader). An import inside a function is not counted, and must say why it is there."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "canary_mw"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def resolve(importer: str, node: ast.ImportFrom) -> Iterator[str]:
    """The canary_mw modules a ``from ... import ...`` names."""
    package = importer if MODULES[importer].name == "__init__.py" else importer.rpartition(".")[0]
    if node.level:
        base = package.split(".")
        base = base[: len(base) - (node.level - 1)]
        target = ".".join([*base, node.module] if node.module else base)
    else:
        target = node.module or ""
    if target not in MODULES:
        return
    named = [f"{target}.{alias.name}" for alias in node.names]
    submodules = [name for name in named if name in MODULES]
    yield from submodules
    if len(submodules) < len(named):  # names defined in the module itself (or its __init__)
        yield target


def top_level(tree: ast.Module) -> Iterator[ast.stmt]:
    """Statements that run when the module is imported (into if / try blocks, not defs)."""
    todo: list[ast.stmt] = list(tree.body)
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If):
            todo.extend([*node.body, *node.orelse])
        elif isinstance(node, ast.Try):
            todo.extend([*node.body, *node.orelse, *node.finalbody])
            for handler in node.handlers:
                todo.extend(handler.body)


def imports(module: str) -> set[str]:
    tree = ast.parse(MODULES[module].read_text())
    found: set[str] = set()
    for node in top_level(tree):
        if isinstance(node, ast.ImportFrom):
            found.update(resolve(module, node))
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in MODULES)
    found.discard(module)
    return found


def graph() -> dict[str, set[str]]:
    return {module: imports(module) for module in MODULES}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path [a, b, ..., a], or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for after in sorted(edges.get(node, ())):
            if state.get(after) == 1:
                return [*path[path.index(after) :], after]
            if after not in state and (cycle := visit(after)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


@pytest.mark.parametrize(
    ("edges", "cycle"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"a2"}, "a2": set(), "b": {"b"}}, ["b", "b"]),
    ],
    ids=["chain", "triangle", "self"],
)
def test_find_cycle_finds_cycles(edges: dict[str, set[str]], cycle: list[str] | None) -> None:
    assert find_cycle(edges) == cycle


def test_the_graph_sees_relative_imports() -> None:
    edges = graph()
    assert "canary_mw.asgi" in edges["canary_mw"]  # from .asgi import CanaryRouter
    assert "canary_mw.engine.core" in edges["canary_mw.engine.sync"]  # from .core import ...
    assert "canary_mw.errors" in edges["canary_mw.engine.core"]  # from ..errors import ...


def test_no_import_cycle_among_canary_mw_modules() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_every_import_inside_a_function_says_why() -> None:
    unexplained = []
    for module, path in MODULES.items():
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for inner in ast.walk(node):
                if isinstance(inner, (ast.Import, ast.ImportFrom)):
                    line = lines[inner.lineno - 1]
                    above = lines[inner.lineno - 2].strip() if inner.lineno > 1 else ""
                    if "#" not in line and not above.startswith("#"):
                        unexplained.append(f"{module}:{inner.lineno}")
    assert unexplained == []
