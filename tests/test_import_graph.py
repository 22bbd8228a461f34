"""The package's modules import each other without a cycle (function-level and TYPE_CHECKING imports count:
a cycle there is still two modules that cannot be understood, or changed, apart)."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import lmops

PACKAGE = Path(lmops.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Each lmops module -> the lmops modules it imports (``from a import b`` is module ``a.b`` if it exists)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets.add(base)
                targets.update(f"{base}.{alias.name}" for alias in node.names)
        graph[name] = {t for t in map(resolve, targets) if t and t != name and t.startswith("lmops")}
    return graph


def test_the_walker_sees_imports_of_every_kind():
    graph = import_graph()
    assert "lmops.core" in graph["lmops.services"]  # module level
    assert "lmops.observability.logging" in graph["lmops.app"]
    assert "lmops.batch.replay" in graph["lmops.batch.cli"]  # inside a function


def test_no_import_cycles():
    try:
        tuple(TopologicalSorter(import_graph()).static_order())
    except CycleError as exc:
        raise AssertionError(f"import cycle: {' -> '.join(exc.args[1])}") from None


def test_nothing_imports_the_roots():
    """The composition roots (the app, the CLI, the services they build) are imported by no lmops module."""
    roots = {"lmops.app", "lmops.cli", "lmops.services", "lmops.__main__"}
    importers = {m: sorted(deps & roots) for m, deps in import_graph().items() if m not in roots and deps & roots}
    assert importers == {}
