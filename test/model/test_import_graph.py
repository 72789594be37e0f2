"""The model package reads bottom-up: no module imports one that (directly or not) imports it
back. Function-local imports count (they are real imports, only later); imports under
``if TYPE_CHECKING:`` do not (annotations only)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

import ovsam_ros

PACKAGE_ROOT = Path(ovsam_ros.__file__).resolve().parent


def _module_name(path: Path) -> str:
    top = path.parent
    while (top.parent / "__init__.py").exists():  # climb to the top-level package
        top = top.parent
    parts = list(path.relative_to(top.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module: str, is_package: bool, known: Set[str]) -> Set[str]:
    """Modules of ``known`` that ``module`` imports anywhere outside ``if TYPE_CHECKING:``."""
    found: Set[str] = set()
    package = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # `from . import checkpoints` imports a submodule, not a name
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    # `import a.b.c` imports a.b.c; keep the longest known prefix of each name.
    result = set()
    for name in found:
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            candidate = ".".join(parts[:i])
            if candidate in known:
                result.add(candidate)
                break
    result.discard(module)
    return result


def import_graph(package_dir: Path) -> Dict[str, Set[str]]:
    """Intra-package import edges of every module under ``package_dir`` (the package's own
    ``__init__`` left out: it re-exports everything by design)."""
    files = {_module_name(p): p for p in package_dir.rglob("*.py")}
    known = set(files)
    graph = {}
    for name, path in files.items():
        if path.name == "__init__.py" and path.parent == package_dir:
            continue
        tree = ast.parse(path.read_text(), str(path))
        graph[name] = {m for m in _imports(tree, name, path.name == "__init__.py", known)
                       if not (files[m].name == "__init__.py" and files[m].parent == package_dir)}
    return graph


def find_cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    cycles: List[List[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return cycles


def test_cycle_finder_sees_a_known_circle(tmp_path):
    """The checker itself, on a hand-made package with the circle the model package used to have."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .a import x\n")
    (pkg / "errors.py").write_text("class E(Exception): pass\n")
    (pkg / "a.py").write_text("from .b import E\nx = 1\n")  # like backbone -> checkpoints
    (pkg / "b.py").write_text(
        "from typing import TYPE_CHECKING\nfrom .errors import E\nif TYPE_CHECKING:\n    from .c import C\n"
        "def f():\n    from .a import x\n    return x\n")  # a function-local import still counts
    (pkg / "c.py").write_text("from . import b\nclass C: pass\n")  # TYPE_CHECKING edge b -> c ignored
    assert find_cycles(import_graph(pkg)) == [["pkg.a", "pkg.b"]]
    (pkg / "b.py").write_text("from .errors import E\n")
    assert find_cycles(import_graph(pkg)) == []


def test_model_package_has_no_import_cycles():
    graph = import_graph(PACKAGE_ROOT / "model")
    assert {"ovsam_ros.model.errors", "ovsam_ros.model.checkpoints", "ovsam_ros.model.build"} <= set(graph)
    assert find_cycles(graph) == []
    # errors and key maps sit at the bottom: both the loaders and the model code may import them.
    assert graph["ovsam_ros.model.errors"] == set() and graph["ovsam_ros.model.keymaps"] == set()
    assert "ovsam_ros.model.checkpoints" not in graph["ovsam_ros.model.backbone"]
    assert "ovsam_ros.model.ovsam" not in graph["ovsam_ros.model.checkpoints"]


def test_no_cycle_through_the_model_package():
    """Over all of ovsam_ros: nothing the model package imports imports it back (the model sits
    below the loader, node and CLI)."""
    cycles = find_cycles(import_graph(PACKAGE_ROOT))
    assert [c for c in cycles if any(m.startswith("ovsam_ros.model") for m in c)] == []


def test_ovsam_ros_has_no_import_cycles():
    """Over all of ovsam_ros, sub-package ``__init__`` files included (a lazy ``__getattr__``
    re-export is a function-local import, so it counts: ovsam_ros.benchmark used to re-export
    ovsam_ros.benchmark.run, which imports the package back)."""
    graph = import_graph(PACKAGE_ROOT)
    assert {"ovsam_ros.benchmark", "ovsam_ros.benchmark.run", "ovsam_ros.ros.node_cli"} <= set(graph)
    assert find_cycles(graph) == []
