"""The package's import graph, read from the source with ``ast`` (imports under ``if
TYPE_CHECKING:`` and inside functions included, since each ties one module to another): no
module imports one of a layer above it, no circle of imports, and only the
App reaches its client."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pgjobs"

LAYERS = (
    ("pgjobs.metrics",),
    ("pgjobs.web", "pgjobs.testing", "pgjobs.contrib"),
    ("pgjobs.bench",),
    ("pgjobs.cli",),
    ("pgjobs.__main__",),
)
"""The layers above the core (every other module of the package), lowest first: a module may
import the core and the layers below its own, never one above it (the core imports none)."""

KNOWN_CIRCLES: list[frozenset[str]] = []
"""Circles of imports that are still to be untied. A circle found must lie within one of them;
shrink this list as they are untied, down to nothing."""


CLIENT_USERS = {"pgjobs._app", "pgjobs._client", "pgjobs._job"}
"""The modules that may reach an object's ``_client`` (the App's, a Job's): the rest go through
the App's methods."""

KNOWN_CLIENT_USERS: set[str] = set()
"""Modules that still reach ``app._client``; shrink to nothing."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported(name: str, path: Path, known: Iterable[str]) -> set[str]:
    """The package's modules that module ``name`` (at ``path``) imports, anywhere in it, but the
    packages that hold it."""
    names = set(known)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    # the packages a module lies in are imported before it: no tie of its own
    ancestors = {name.rsplit(".", n)[0] for n in range(name.count(".") + 1)}
    return {module for module in found if module in names and module not in ancestors}


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imported(name, path, found) for name, path in found.items()}


def layer(module: str) -> int:
    for level, prefixes in enumerate(LAYERS, start=1):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return level
    return 0


def circles(edges: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def upward(edges: dict[str, set[str]]) -> Iterator[str]:
    for module, targets in sorted(edges.items()):
        for target in sorted(targets):
            if layer(target) > layer(module):
                yield f"{module} imports {target}"


def test_the_graph_is_read() -> None:
    """The reading finds the imports it must: relative, absolute, type-only and deferred."""
    edges = graph()
    assert "pgjobs._app" in edges["pgjobs"]
    assert "pgjobs._sql" in edges["pgjobs.web._sql"] or "pgjobs._sql" in edges["pgjobs._admin"]
    assert "pgjobs._app" in edges["pgjobs.web._site"]  # from .._app import App
    assert "pgjobs.bench" in edges["pgjobs.cli"]  # inside a function
    assert "pgjobs._call" in edges["pgjobs._batch"]  # under TYPE_CHECKING


def test_no_module_imports_a_layer_above_its_own() -> None:
    assert list(upward(graph())) == []


def reaches_client(path: Path) -> bool:
    """Whether the module reads ``x._client`` of an object ``x`` other than ``self``."""
    return any(
        isinstance(node, ast.Attribute)
        and node.attr == "_client"
        and not (isinstance(node.value, ast.Name) and node.value.id == "self")
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
    )


def test_only_the_app_reaches_its_client() -> None:
    found = {name for name, path in modules().items() if reaches_client(path)}
    assert found - CLIENT_USERS - KNOWN_CLIENT_USERS == set()


def test_no_circle_of_imports_beyond_the_known_ones() -> None:
    found = circles(graph())
    new = [sorted(c) for c in found if not any(c <= known for known in KNOWN_CIRCLES)]
    assert new == [], f"new circles of imports: {new}"


@pytest.mark.parametrize(
    ("edges", "expected"),
    [
        ({"a": {"b"}, "b": {"a"}, "c": {"a"}}, [frozenset({"a", "b"})]),
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"d"}}, [frozenset({"a", "b", "c"})]),
    ],
)
def test_circles_are_found(edges: dict[str, set[str]], expected: list[frozenset[str]]) -> None:
    assert circles(edges) == expected


def test_an_upward_import_is_found() -> None:
    assert list(upward({"pgjobs._app": {"pgjobs.web"}, "pgjobs.cli": {"pgjobs._app"}})) == [
        "pgjobs._app imports pgjobs.web"
    ]
