"""The packages import each other one way: no module of contmm, strategies or streams imports,
even for type hints only, a module that imports it back (a circle is how a layer starts to
depend on the layers built on it)."""

import ast
from graphlib import CycleError, TopologicalSorter

from tests.helpers import REPO

PACKAGES = ("contmm", "strategies", "streams")


def module_name(path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path, name: str, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that ``path`` (module ``name``) imports anywhere in it."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            found |= {base, *(f"{base}.{alias.name}" for alias in node.names)}
    return (found & modules) - {name}


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}
    return {name: imported(path, name, set(paths)) for name, path in paths.items()}


def test_no_module_imports_a_module_that_imports_it_back():
    graph = import_graph()
    assert graph["contmm.training.runner"], "the graph was read: the runner imports contmm modules"
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as error:
        raise AssertionError(f"import circle: {' -> '.join(error.args[1])}") from None
    # The model is imported by the loop, never the other way round.
    assert not any(
        dep.startswith("contmm.training")
        for m, deps in graph.items()
        if m.startswith("contmm.model")
        for dep in deps
    )
