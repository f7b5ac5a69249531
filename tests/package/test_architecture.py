"""The package's shape (issue 23): no import circle, the portal does not import the sync, and
modules small enough to read.

The import graph is read from the source with ``ast`` (module-level and function-level
imports alike: a late import still ties two modules together), so a circle hidden behind a
function-local import fails here too. Imports under ``if TYPE_CHECKING:`` are left out: they
never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "nomos_billing"
# "Under ~400 lines": a little room for a docstring grown by a fix, not for a second job.
MAX_LINES = 420


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        if "migrations" in path.parts:
            continue
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    found: set[str] = set()
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
        for child in node.body
        for inner in ast.walk(child)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # "from . import state" names the submodule, not the package's __init__.
            submodules = {f"{target}.{a.name}" for a in node.names} & modules.keys()
            if submodules:
                found.update(submodules)
            elif target in modules:
                found.add(target)
    found.discard(name)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_no_import_circle(graph: dict[str, set[str]]) -> None:
    circles = sorted(name for name in graph if name in _reachable(graph, name))
    assert circles == []


def test_the_graph_is_read(graph: dict[str, set[str]]) -> None:
    # Without edges the tests above and below would pass on an empty graph.
    assert "nomos_billing.models" in _reachable(graph, "nomos_billing.portal")
    assert "nomos_billing.sync" in _reachable(graph, "nomos_billing.processing")


def test_the_portal_does_not_import_the_sync(graph: dict[str, set[str]]) -> None:
    # The portal mints links; storing what Nomos says is the sync's job, reached only through
    # the leads module when a user who has just checked out clicks (leads.link_recent_checkout).
    assert "nomos_billing.sync" not in graph["nomos_billing.portal"]
    assert "nomos_billing.sync" in graph["nomos_billing.leads"]


def test_every_module_is_small_enough_to_read() -> None:
    sizes = {
        str(path.relative_to(PACKAGE.parent)): len(path.read_text(encoding="utf-8").splitlines())
        for path in _modules().values()
    }
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}
