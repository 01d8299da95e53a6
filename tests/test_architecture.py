"""The import graph of vlm_lens, read from the source: no circles, and layers that point one way.

Edges are every `import x` / `from x import y` anywhere in a module: at the top, inside a
function or a method, under a `try`. An import inside a function still runs (on first call)
and still ties the two modules together, so it counts; moving an import into a function does
not hide a circle from this test. Imports under `if TYPE_CHECKING:` are not edges: they never
run, and annotations must be able to name a type from a module that uses this one.

`from package import name` is an edge to `package.name` if that is a module, to the module a
lazily loading package (`vlm_lens._lazy`, a `_HOMES` table in its `__init__`) names as the
home of `name`, and otherwise to the package itself.

The layers, lowest first (a module may import from its own layer's package and from lower
layers; packages of one layer do not import each other):

0. `data`, `architectures`, `_lazy`: datasets and the per-architecture files (records,
   tiny-checkpoint recipes, real-vocabulary specifics); no model code.
1. `adapters`: the facade through which the library reads the architectures' adapter records.
2. `core`: the attention function, hook points, segments, layer specs, `HookedVLM`,
   recordings, generation, traces.
3. `metrics`, `interventions`, `patching`, `zoo`, `viz`: tools built on core (and data) and
   each other's equals. `zoo` builds checkpoints; it sits here (not lower) because nothing below
   needs it and a checkpoint builder may use `HookedVLM`.
4. `studies`: pipelines from a dataset to records and tables.
5. `reports`: figures and pages of the studies' tables.
6. `cli`: the console script over all of it.
7. `vlm_lens` (the package's `__init__`): the facade that points at the public names.

Not for: style rules within a module (ruff) or the size of modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "vlm_lens"

LAYERS: list[set[str]] = [
    {"data", "architectures", "_lazy"},
    {"adapters"},
    {"core"},
    {"metrics", "interventions", "patching", "zoo", "viz"},
    {"studies"},
    {"reports"},
    {"cli"},
    {""},  # the package's own __init__
]

# Known and named exceptions (none left: issue 13's study harness removed the last ones).
# Each must still exist: when one is fixed, this list must shrink (see the last test).
KNOWN_UPWARD: set[tuple[str, str]] = set()
KNOWN_CIRCLES: list[set[str]] = []


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, ast.Module]:
    return {
        _module_name(p): ast.parse(p.read_text(), filename=str(p))
        for p in sorted(PACKAGE.rglob("*.py"))
    }


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run (all but the bodies of `if TYPE_CHECKING:`)."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _lazy_homes(tree: ast.Module) -> dict[str, str]:
    """The `_HOMES = {name: module}` table of a lazily loading package, if it has one."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "_HOMES" for t in node.targets
        ):
            return ast.literal_eval(node.value)
    return {}


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    """Module -> the vlm_lens modules it imports at run time (see the module docstring)."""
    trees = _modules()
    homes = {name: _lazy_homes(tree) for name, tree in trees.items()}
    packages = {_module_name(p.parent) for p in PACKAGE.rglob("__init__.py")}
    graph: dict[str, set[str]] = {name: set() for name in trees}
    for name, tree in trees.items():
        graph[name].update(homes[name].values())  # a lazy package loads these on access
        for node in _runtime_imports(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                source = _absolute(name, node, name in packages)
                targets = []
                for alias in node.names:
                    full = f"{source}.{alias.name}"
                    if full in trees:
                        targets.append(full)
                    else:
                        targets.append(homes.get(source, {}).get(alias.name, source))
            graph[name].update(t for t in targets if t in trees and t != name)
    return graph


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    for level, members in enumerate(LAYERS):
        if top in members:
            return level
    raise AssertionError(f"{module} is in no layer: add its package to LAYERS")


def _package(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def _circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(component)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_graph_sees_imports_inside_functions_and_skips_type_checking(graph):
    # hooked_vlm imports interop inside `to_nnsight` (so that only its users import nnsight);
    # generation names HookedVLM only under TYPE_CHECKING.
    assert "vlm_lens.core.interop" in graph["vlm_lens.core.hooked_vlm"]
    assert "vlm_lens.core.generation" in graph["vlm_lens.core.hooked_vlm"]
    assert "vlm_lens.core.hooked_vlm" not in graph["vlm_lens.core.generation"]
    # a lazily loading package's names resolve to their homes
    assert "vlm_lens.core.hooked_vlm" in graph["vlm_lens.cli._common"]


def test_no_import_circles(graph):
    circles = [c for c in _circles(graph) if c not in KNOWN_CIRCLES]
    assert not circles, f"import circles: {[sorted(c) for c in circles]}"


def test_imports_point_down_the_layers(graph):
    wrong = []
    for source, targets in graph.items():
        for target in targets:
            if _package(source) == _package(target) or (source, target) in KNOWN_UPWARD:
                continue
            if _layer(target) >= _layer(source):
                wrong.append(f"{source} (layer {_layer(source)}) -> {target} ({_layer(target)})")
    assert not wrong, "imports that point up or sideways:\n" + "\n".join(sorted(wrong))


def test_the_library_does_not_import_the_scripts_beside_it():
    for path in PACKAGE.rglob("*.py"):
        for node in _runtime_imports(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            assert not any((n or "").split(".")[0] == "scripts" for n in names), path


def test_known_exceptions_still_exist(graph):
    """When the harness phase removes one, remove it from KNOWN_* above."""
    for source, target in KNOWN_UPWARD:
        assert target in graph[source], f"{source} -> {target} is gone: drop it from KNOWN_UPWARD"
    circles = _circles(graph)
    for known in KNOWN_CIRCLES:
        assert known in circles, f"circle {sorted(known)} is gone: drop it from KNOWN_CIRCLES"


# Modules without a "Not for:" line (none left); a module added here must be fixed soon.
KNOWN_WITHOUT_NOT_FOR: set[str] = set()


def test_every_module_says_what_it_is_for_and_not_for():
    lacking = {
        name
        for name, tree in _modules().items()
        if "Not for:" not in (ast.get_docstring(tree) or "")
    }
    assert lacking == KNOWN_WITHOUT_NOT_FOR, (
        f"no 'Not for:' line: {sorted(lacking - KNOWN_WITHOUT_NOT_FOR)}; "
        f"fixed (drop from KNOWN_WITHOUT_NOT_FOR): {sorted(KNOWN_WITHOUT_NOT_FOR - lacking)}"
    )
