"""The import structure of src/gendisc: no cycle, and no lower layer reaching an upper one.

Every ``import`` statement counts, at any depth (a lazy import inside a function is still a
dependency: it only hides a cycle). Importing ``gendisc.a.b`` also runs ``gendisc/a/__init__``,
so it depends on that package too (unless the importer lives inside ``gendisc.a``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

SOURCE_ROOT = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "gendisc"

# command-line entry points and what sits on them: nothing below may import these
ENTRY_POINTS = (
    "gendisc.train",
    "gendisc.eval",
    "gendisc.sample",
    "gendisc.pipelines",
    "gendisc.members",
)
# layers from the bottom up: a module may import its own layer and the ones below, never above
LAYERS = (
    ("gendisc.data",),
    ("gendisc.nets",),
    ("gendisc.models", "gendisc.metrics"),
    ("gendisc.callbacks",),
)
# known violations in files that are being rewritten elsewhere; each names its issue. An entry
# that no longer occurs fails the test, so the list only shrinks.
ALLOWED: set[tuple[str, str]] = set()


def _under(module: str, prefixes: Iterable[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def discover(root: Path = SOURCE_ROOT) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package's __init__) for every module of gendisc."""
    modules = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def _ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph(modules: dict[str, tuple[Path, bool]]) -> dict[str, set[str]]:
    """Module -> the gendisc modules it imports (any depth, packages' __init__ included)."""

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, (path, is_package) in modules.items():
        package = module if is_package else module.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                # `from pkg import sub` imports the submodule pkg.sub when there is one
                names = [f"{base}.{alias.name}" for alias in node.names] + [base]
            else:
                continue
            for name in names:
                if name == PACKAGE or name.startswith(PACKAGE + "."):
                    target = resolve(name)
                    if target is not None:
                        targets.add(target)
        own = set(_ancestors(module)) | {module}
        graph[module] = {
            dep for target in targets for dep in [*_ancestors(target), target] if dep not in own
        }
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle [a, b, ..., a] per group of modules that import each other (each strongly
    connected component of more than one module, Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[set[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if dep not in index:
                connect(dep)
                low[node] = min(low[node], low[dep])
            elif dep in stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component: set[str] = set()
            member = None
            while member != node:
                member = stack.pop()
                component.add(member)
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_cycle_through(graph, component) for component in components]


def _cycle_through(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest import chain from the component's first module back to itself."""
    start = min(component)
    chains = {start: [start]}
    todo = [start]
    while todo:
        node = todo.pop(0)
        for dep in sorted(graph[node] & component):
            if dep == start:
                return [*chains[node], start]
            if dep not in chains:
                chains[dep] = [*chains[node], dep]
                todo.append(dep)
    raise AssertionError(f"no cycle in {component}")


def private_imports(modules: dict[str, tuple[Path, bool]]) -> list[str]:
    """``from gendisc.x import _name`` in another module: a private name used as an API."""
    found = []
    for module, (path, _) in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGE):
                found += [
                    f"{module}: from {node.module} import {alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_") and not alias.name.startswith("__")
                ]
    return found


def reachable(graph: dict[str, set[str]], start: str) -> dict[str, list[str]]:
    """Every module imported by ``start`` directly or through others -> one import chain."""
    chains = {start: [start]}
    todo = [start]
    while todo:
        node = todo.pop()
        for dep in sorted(graph.get(node, ())):
            if dep not in chains:
                chains[dep] = [*chains[node], dep]
                todo.append(dep)
    del chains[start]
    return chains


def _layer(module: str) -> int | None:
    for rank, prefixes in enumerate(LAYERS):
        if _under(module, prefixes):
            return rank
    return None


def layering_violations(graph: dict[str, set[str]]) -> list[tuple[str, str, list[str]]]:
    """(module, forbidden module, import chain) for every module of a layer that reaches an
    entry point or a higher layer, directly or through any other module."""
    found = []
    for module in sorted(graph):
        rank = _layer(module)
        if rank is None:
            continue
        for target, chain in sorted(reachable(graph, module).items()):
            upper = _layer(target)
            if _under(target, ENTRY_POINTS) or (upper is not None and upper > rank):
                found.append((module, target, chain))
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(discover())


def test_the_graph_sees_every_kind_of_import(tmp_path: Path) -> None:
    """Top-level, relative, `from pkg import submodule` and function-level imports all count,
    and a submodule's import also depends on its package's __init__."""
    src = tmp_path / PACKAGE
    (src / "low").mkdir(parents=True)
    (src / "high").mkdir()
    (src / "__init__.py").write_text("")
    (src / "low" / "__init__.py").write_text("from gendisc.low.a import thing\n")
    (src / "low" / "a.py").write_text("def f():\n    from gendisc.high import b\n")
    (src / "low" / "c.py").write_text("from . import a\nfrom ..high.b import x\n")
    (src / "high" / "__init__.py").write_text("")
    (src / "high" / "b.py").write_text("import gendisc.low.c\nx = 1\n")
    seen = import_graph(discover(tmp_path))
    assert seen["gendisc.low"] == {"gendisc.low.a"}
    assert seen["gendisc.low.a"] == {"gendisc.high", "gendisc.high.b"}
    assert seen["gendisc.low.c"] == {"gendisc.low.a", "gendisc.high", "gendisc.high.b"}
    assert seen["gendisc.high.b"] == {"gendisc.low", "gendisc.low.c"}
    (cycle,) = import_cycles(seen)
    assert cycle == ["gendisc.high.b", "gendisc.low.c", "gendisc.high.b"]  # the shortest


def test_no_import_cycle(graph: dict[str, set[str]]) -> None:
    cycles = import_cycles(graph)
    assert not cycles, "import cycles among gendisc modules:\n" + "\n".join(
        " -> ".join(cycle) for cycle in cycles
    )


def test_no_private_name_is_imported_from_another_module() -> None:
    """A name that another module needs is public: no leading underscore."""
    found = private_imports(discover())
    assert not found, "\n".join(found)


def test_lower_layers_import_neither_entry_points_nor_upper_layers(
    graph: dict[str, set[str]],
) -> None:
    """data -> nets -> models/metrics -> callbacks -> entry points (train, eval, sample,
    pipelines): checked on every chain of imports, so a detour through a helper counts."""
    found = layering_violations(graph)
    unexpected = [v for v in found if (v[0], v[1]) not in ALLOWED]
    assert not unexpected, "\n".join(
        f"{module} reaches {target}: {' -> '.join(chain)}" for module, target, chain in unexpected
    )
    stale = ALLOWED - {(v[0], v[1]) for v in found}
    assert not stale, f"allow-list entries that no longer occur (remove them): {sorted(stale)}"


def test_the_layers_exist(graph: dict[str, set[str]]) -> None:
    """A renamed package would otherwise make the layering test check nothing."""
    for prefix in [p for layer in LAYERS for p in layer] + list(ENTRY_POINTS):
        assert prefix in graph, f"{prefix} not found under {SOURCE_ROOT}: update this test"


def test_the_readme_layout_names_every_package_and_top_level_module() -> None:
    """README's layout section has one line per package and top-level module of src/gendisc."""
    readme = (SOURCE_ROOT.parent / "README.md").read_text()
    section = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    listed = {line.split()[0] for line in section.splitlines() if line.startswith("  ")}
    root = SOURCE_ROOT / PACKAGE
    present = {f"{p.name}/" for p in root.iterdir() if (p / "__init__.py").is_file()}
    present |= {p.name for p in root.glob("*.py") if p.name != "__init__.py"}
    assert present == listed, (
        f"missing from README: {sorted(present - listed)}; "
        f"not in src/gendisc: {sorted(listed - present)}"
    )
