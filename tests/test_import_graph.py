"""relay/ and yamux/ import in one direction only: no module imports another that imports it back.

The graph is built from the source with ``ast``, every import counted wherever
it is written (inside ``if TYPE_CHECKING:`` or a function too), so a circle
cannot hide behind a lazy or typing-only import.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "relay"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, name: str, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that the file at ``path`` (module ``name``) imports.

    Only what is written: importing ``a.b`` also runs ``a/__init__.py``, but that
    edge is the same for every module of ``a`` and is left out."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                origin = ".".join([*base, node.module] if node.module else base)
            else:
                origin = node.module or ""
            for alias in node.names:
                # ``from ..ops import logs`` imports the module relay.ops.logs; a name
                # that is no module comes from the package's __init__.
                submodule = f"{origin}.{alias.name}"
                found.add(submodule if submodule in modules else origin)
    return {target for target in found if target in modules and target != name}


def import_graph(package: str = PACKAGE) -> dict[str, set[str]]:
    paths = {module_name(path): path for path in (ROOT / package).rglob("*.py")}
    modules = set(paths)
    return {name: imports_of(path, name, modules) for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` as a path that ends where it starts, or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        if name in path:
            return [*path[path.index(name) :], name]
        if name in done:
            return None
        path.append(name)
        for target in sorted(graph[name]):
            if cycle := visit(target):
                return cycle
        path.pop()
        done.add(name)
        return None

    for name in sorted(graph):
        if cycle := visit(name):
            return cycle
    return None


def test_the_graph_sees_relative_lazy_and_type_checking_imports() -> None:
    graph = import_graph()
    assert "relay.server.session" in graph["relay.server.relay"]  # from .session import ...
    assert "relay.ops.metrics" in graph["relay.cli.run"]  # inside a function
    assert "relay.ops.logs" in graph["relay.cli.run"]  # from ..ops import logs
    assert "relay.ops" not in graph["relay.cli.run"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_relay_has_no_import_cycle() -> None:
    assert find_cycle(import_graph()) is None


def test_yamux_has_no_import_cycle() -> None:
    graph = import_graph("yamux")
    assert "yamux.outbox" in graph["yamux.connection"]
    assert find_cycle(graph) is None
