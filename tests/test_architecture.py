"""The layout rules of docs/architecture.md, checked on the source tree.

* No import cycle between the package's modules. Imports inside functions and
  under ``TYPE_CHECKING`` count too: a cycle there is still two modules that
  cannot be understood one without the other.
* A service (``krill.origin``, ``krill.tracker``, ``krill.agent``) imports the
  shared library and itself, never another service.
* No source module is over 500 lines.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "krill"
SERVICES = ("krill.origin", "krill.tracker", "krill.agent")
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported(path: Path, name: str, known: set[str]) -> set[str]:
    """The package's modules ``path`` imports, wherever in the file the import is."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from pkg import mod`` names the module pkg.mod when there is one; the
            # package itself counts only for names it defines (a package's
            # ``__init__`` importing its own submodules is no cycle).
            submodules = [f"{base}.{alias.name}" for alias in node.names]
            named = [target for target in submodules if target in known]
            targets = named if len(named) == len(submodules) else [base, *named]
        else:
            continue
        found.update(target for target in targets if target in known)
    found.discard(name)
    return found


@functools.cache
def import_graph() -> dict[str, set[str]]:
    paths = modules()
    known = set(paths)
    return {name: imported(path, name, known) for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path of module names, or None (iterative DFS)."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    for root in sorted(graph):
        if root in state:
            continue
        stack: list[tuple[str, list[str]]] = [(root, sorted(graph[root]))]
        state[root] = 1
        while stack:
            node, todo = stack[-1]
            if not todo:
                state[node] = 2
                stack.pop()
                continue
            nxt = todo.pop()
            if state.get(nxt) == 1:
                path = [name for name, _ in stack]
                return [*path[path.index(nxt):], nxt]
            if nxt not in state:
                state[nxt] = 1
                stack.append((nxt, sorted(graph[nxt])))
    return None


def service_of(name: str) -> str | None:
    return next((s for s in SERVICES if name == s or name.startswith(s + ".")), None)


def test_no_import_cycle_between_the_packages_modules() -> None:
    assert find_cycle(import_graph()) is None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


def test_a_service_imports_only_itself_and_the_shared_library() -> None:
    crossings = [
        f"{name} imports {target}"
        for name, targets in import_graph().items()
        for target in targets
        if service_of(target) not in (None, service_of(name))
    ]
    assert crossings == []


def test_the_shared_library_imports_no_service() -> None:
    # The CLI is the one place that names every service (it registers their subcommands).
    leaks = [
        f"{name} imports {target}"
        for name, targets in import_graph().items()
        if service_of(name) is None and name != "krill.cli"
        for target in targets
        if service_of(target) is not None
    ]
    assert leaks == []


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_module_is_over_500_lines(name: str) -> None:
    lines = len(modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines; split it by responsibility"
