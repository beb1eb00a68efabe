"""The import graph of `argd/` (the benchmarks in `argd/bench/` included) has no cycle, and no function
imports lazily what would close one.

A small AST checker: module-level imports (those `if TYPE_CHECKING:` guards are left out: they never run)
make the graph, which must be acyclic. An import inside a function is fine for loading something heavy late
(torch in the API), but not for hiding a cycle: it fails here when the module it imports leads back to the
importing module.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("argd",)


@dataclass
class ModuleImports:
    """Where one module's imports point, split by when they run."""

    top: set[str] = field(default_factory=set)
    lazy: dict[str, int] = field(default_factory=dict)  # imported module -> first line


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if "__pycache__" not in path.parts
    }


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, in_function: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement below `node`, with whether it runs inside a function."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for orelse in child.orelse:
                yield from _walk_one(orelse, in_function)
            continue
        yield from _walk_one(child, in_function)


def _walk_one(node: ast.AST, in_function: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node, in_function
        return
    nested = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
    yield from _walk(node, nested)


def _targets(node: ast.Import | ast.ImportFrom, importer: str, is_package: bool, known: set[str]) -> set[str]:
    """The project modules an import statement loads (the most specific known name of each)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            anchor = importer.split(".")
            anchor = anchor if is_package else anchor[:-1]
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, base] if base else anchor)
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
    found = set()
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != importer:
            found.add(name)
    return found


def import_graph() -> dict[str, ModuleImports]:
    modules = project_modules()
    known = set(modules)
    graph: dict[str, ModuleImports] = {}
    for name, path in modules.items():
        imports = graph[name] = ModuleImports()
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node, lazy in _walk(tree, in_function=False):
            for target in _targets(node, name, path.name == "__init__.py", known):
                if lazy:
                    imports.lazy.setdefault(target, node.lineno)
                else:
                    imports.top.add(target)
    return graph


def find_cycle(graph: dict[str, ModuleImports]) -> list[str] | None:
    """One cycle of module-level imports as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module].top):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


def reaches(graph: dict[str, ModuleImports], start: str, goal: str) -> list[str] | None:
    """A chain of imports (module-level or in functions) from `start` to `goal`, or None."""
    seen = {start}
    queue = [[start]]
    while queue:
        chain = queue.pop(0)
        if chain[-1] == goal:
            return chain
        imports = graph[chain[-1]]
        for target in sorted((imports.top | set(imports.lazy)) - seen):
            seen.add(target)
            queue.append([*chain, target])
    return None


def hidden_cycles(graph: dict[str, ModuleImports]) -> list[str]:
    """Function-local imports that close a cycle: the imported module leads back to the importer (through
    module-level imports, or other function-local ones: two lazy imports can hide one cycle)."""
    found = []
    for module, imports in sorted(graph.items()):
        for target, line in sorted(imports.lazy.items()):
            chain = reaches(graph, target, module)
            if chain:
                found.append(f"{module}:{line} imports {target} in a function; {' -> '.join(chain)}")
    return found


def test_module_imports_have_no_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_function_imports_to_dodge_a_cycle() -> None:
    assert hidden_cycles(import_graph()) == []


def test_the_checker_tells_a_dodged_cycle_from_a_lazy_import(tmp_path: Path) -> None:
    def graph_of(**sources: str) -> dict[str, ModuleImports]:
        known = set(sources)
        graph = {}
        for name, source in sources.items():
            imports = graph[name] = ModuleImports()
            for node, lazy in _walk(ast.parse(source), in_function=False):
                for target in _targets(node, name, False, known):
                    (imports.lazy.__setitem__(target, node.lineno) if lazy else imports.top.add(target))
        return graph

    dodged = graph_of(**{"p.a": "from p.b import x\n", "p.b": "def f():\n    from p.a import y\n", "p.c": ""})
    assert find_cycle(dodged) is None
    assert hidden_cycles(dodged) == ["p.b:2 imports p.a in a function; p.a -> p.b"]
    lazy = graph_of(**{"p.a": "def f():\n    import p.heavy\n", "p.heavy": "import math\n"})
    assert hidden_cycles(lazy) == [] and find_cycle(lazy) is None
    looped = graph_of(
        **{
            "p.a": "import p.b\n",
            "p.b": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import p.c\nimport p.a\n",
            "p.c": "import p.b\n",
        }
    )
    assert find_cycle(looped) == ["p.a", "p.b", "p.a"]


# Who may import whom across the service's layers (adapters -> domain -> persistence), by module prefix.
# The benchmarks (argd.bench) sit on top: they use the service, the service never uses them.
FORBIDDEN = {
    "argd.persistence": ("argd.api", "argd.worker", "argd.cli", "argd.jobs", "argd.bench"),
    "argd.jobs": ("argd.api", "argd.worker", "argd.cli", "argd.bench"),
    "argd.api": ("argd.worker", "argd.cli", "argd.bench"),
    "argd.worker": ("argd.bench",),
    "argd.core": ("argd.api", "argd.worker", "argd.cli", "argd.jobs", "argd.persistence", "argd.bench"),
}
# The exceptions: persistence reads the status vocabulary; the API enqueues through the worker's dispatch.
ALLOWED = {"argd.persistence": {"argd.jobs.status"}, "argd.api": {"argd.worker.dispatch"}}


def test_dependencies_point_one_way() -> None:
    wrong = []
    for module, imports in sorted(import_graph().items()):
        for layer, banned in FORBIDDEN.items():
            if module != layer and not module.startswith(layer + "."):
                continue
            wrong += [
                f"{module} imports {target}"
                for target in sorted(imports.top | set(imports.lazy))
                if target not in ALLOWED.get(layer, set()) and target.startswith(banned)
            ]
    assert wrong == []


def test_no_top_level_bench_package() -> None:
    """The benchmarks live in argd.bench: a top-level `bench` package would clash in site-packages."""
    assert sorted(path.name for path in (ROOT / "bench").glob("*.py")) == []
