"""findlit's import graph: no cycles, and the package layering of docs/design.md.

The graph is read from the source with :mod:`ast` (nothing is imported): every ``import findlit...``
and ``from findlit... import ...`` (and relative import) of a module counts, at module level, inside
functions and under ``if TYPE_CHECKING:`` alike. An edge goes from the importing module to the module
imported: ``from findlit.x import y`` names the module ``findlit.x.y`` when that is a module, else
``findlit.x``. Importing a module of another package also runs that package's ``__init__`` (and its
parents'), so those are edges too; a module's own ancestor packages are not (Python has them started).
Modules named only as strings (:mod:`findlit.moved_modules`) are not edges.

The layering (higher may import lower, never the other way):

    cli -> inference -> training -> tasks -> {interface, losses, metrics, outputs}
        -> {encoders, data, interactive}
        -> helpers (top-level modules: findlit.errors, findlit.moved_modules, shared helpers such as
           an atomic file writer or a nearest resize), which import nothing of findlit but findlit.errors

A module may import anything of its own top-level package and anything of a lower layer. On one
layer, only the pairs of :data:`SIDEWAYS` may import each other, in the direction given. The root
``findlit/__init__.py`` (the public names, ``findlit.Predictor`` on first use) and ``findlit/__main__.py``
sit above everything; only ``cli`` may import the root (``__version__``).
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src"
ROOT = "findlit"

LAYERS: dict[str, int] = {
    "cli": 6,
    "inference": 5,
    "training": 4,
    "tasks": 3,
    "interface": 2,
    "losses": 2,
    "metrics": 2,
    "outputs": 2,
    "encoders": 1,
    "data": 1,
    "interactive": 1,
}
"""Top-level packages by layer; top-level modules (helpers) are layer 0."""

SIDEWAYS: frozenset[tuple[str, str]] = frozenset({("data", "encoders")})
"""(importer, imported) packages of one layer that may import each other, this way only.

data may import encoders: the feature cache and the DataModule key on ``EncoderSpec`` and read an
encoder's strides and channels (``encoders.base``). encoders must not import data. interface, losses,
metrics and outputs import none of one another: tasks combine them.
"""

HELPER_MAY_IMPORT = frozenset({f"{ROOT}.errors"})
"""What a top-level helper module may import of findlit."""

ENTRY_POINTS = frozenset({ROOT, f"{ROOT}.__main__"})
"""Above every layer: they may import anything."""

IMPORTS_ROOT = frozenset({"cli"})
"""Packages that may import the root package ``findlit`` itself."""


@dataclass(frozen=True)
class Edge:
    """``source`` imports ``target`` at ``line`` (``implicit``: a package run by importing below it)."""

    source: str
    target: str
    line: int
    implicit: bool = False

    def __str__(self) -> str:
        how = "runs" if self.implicit else "imports"
        return f"{self.source} (line {self.line}) {how} {self.target}"


def _modules() -> dict[str, tuple[Path, bool]]:
    """``{module name: (path, is a package)}`` of every module under src/findlit."""
    modules = {}
    for path in sorted((SOURCE / ROOT).rglob("*.py")):
        parts = list(path.relative_to(SOURCE).with_suffix("").parts)
        package = parts[-1] == "__init__"
        if package:
            parts = parts[:-1]
        modules[".".join(parts)] = (path, package)
    return modules


MODULES = _modules()


def _imported_names(node: ast.Import | ast.ImportFrom, package: str) -> Iterator[str]:
    """Absolute dotted names an import statement brings in (``from a import b`` gives ``a.b``)."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    if node.level:
        parts = package.split(".")
        base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    for alias in node.names:
        full = f"{base}.{alias.name}"
        yield full if full in MODULES else base


def _owning_module(name: str) -> str | None:
    """The findlit module a dotted name lies in (``findlit.a.b.attr`` -> ``findlit.a.b``), or None."""
    if name != ROOT and not name.startswith(f"{ROOT}."):
        return None
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name if name in MODULES else None


def _ancestors(name: str) -> list[str]:
    """Packages above a module, without the root: ``findlit.a.b.c`` -> ``[findlit.a.b, findlit.a]``."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(len(parts) - 1, 1, -1)]


def _edges() -> list[Edge]:
    edges: set[Edge] = set()
    for name, (path, package) in MODULES.items():
        own_package = name if package else name.rsplit(".", 1)[0]
        own_ancestors = {name, *_ancestors(name)}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for imported in _imported_names(node, own_package):
                target = _owning_module(imported)
                if target is None or target == name:
                    continue
                edges.add(Edge(name, target, node.lineno))
                for parent in _ancestors(target):
                    if parent not in own_ancestors and parent in MODULES:
                        edges.add(Edge(name, parent, node.lineno, implicit=True))
    # one edge per (source, target): the first line that makes it
    first: dict[tuple[str, str], Edge] = {}
    for edge in sorted(edges, key=lambda e: (e.source, e.target, e.implicit, e.line)):
        first.setdefault((edge.source, edge.target), edge)
    return list(first.values())


EDGES = _edges()


def _strongly_connected(nodes: list[str], successors: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in successors.get(node, []):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(sorted(component))

    for node in nodes:
        if node not in index:
            visit(node)
    return components


def _shortest_cycle(start: str, members: set[str], successors: dict[str, list[str]]) -> list[str]:
    """The shortest cycle through ``start`` inside a strongly connected component (breadth first)."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in successors.get(node, []):
                if nxt not in members:
                    continue
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if nxt not in previous:
                    previous[nxt] = node
                    following.append(nxt)
        frontier = following
    return [start]


def find_cycles(edges: list[Edge]) -> list[str]:
    """Each import cycle as a readable chain ``a (line 3) -> b (line 9) -> a``, one per node of a cycle."""
    successors: dict[str, list[str]] = {}
    lines = {(edge.source, edge.target): edge.line for edge in edges}
    for edge in edges:
        successors.setdefault(edge.source, []).append(edge.target)
    for targets in successors.values():
        targets.sort()
    chains: dict[tuple[str, ...], str] = {}
    nodes = sorted({edge.source for edge in edges} | {edge.target for edge in edges})
    for component in _strongly_connected(nodes, successors):
        members = set(component)
        if len(component) == 1 and component[0] not in successors.get(component[0], []):
            continue
        for start in component:
            cycle = _shortest_cycle(start, members, successors)
            # one report per cycle, whichever of its nodes it was found from
            smallest = cycle.index(min(cycle[:-1]))
            canonical = tuple(cycle[smallest:-1] + cycle[:smallest])
            steps = [f"{a} (line {lines[a, b]})" for a, b in itertools.pairwise(cycle)]
            chains.setdefault(canonical, " -> ".join([*steps, cycle[-1]]))
    return sorted(chains.values())


def _package(module: str) -> str | None:
    """A module's top-level package (``findlit.data.records`` -> ``data``); None for a top-level module."""
    parts = module.split(".")
    if len(parts) < 2:
        return None
    if len(parts) == 2 and not MODULES[module][1]:
        return None  # a top-level module: a helper or an entry point
    return parts[1]


def layering_violations(edges: list[Edge]) -> list[str]:
    """Each import against the layering, with the rule it breaks."""
    found = []
    for edge in edges:
        if edge.source in ENTRY_POINTS or edge.implicit:
            continue  # an implicit edge has the verdict of the explicit import that makes it
        source, target = _package(edge.source), _package(edge.target)
        if edge.target in ENTRY_POINTS:
            if source not in IMPORTS_ROOT:
                found.append(f"{edge}: only {sorted(IMPORTS_ROOT)} may import the entry points")
        elif source is None:  # a helper
            if edge.target not in HELPER_MAY_IMPORT:
                found.append(
                    f"{edge}: a top-level helper imports nothing of findlit but {sorted(HELPER_MAY_IMPORT)}"
                )
        elif target is None or target == source:
            continue  # helpers serve everyone; a package imports itself freely
        elif source not in LAYERS or target not in LAYERS:
            found.append(
                f"{edge}: {source if source not in LAYERS else target!r} is in no layer (add it to LAYERS)"
            )
        elif LAYERS[target] > LAYERS[source]:
            found.append(f"{edge}: {source} (layer {LAYERS[source]}) imports a higher layer, {target}")
        elif LAYERS[target] == LAYERS[source] and (source, target) not in SIDEWAYS:
            found.append(
                f"{edge}: {source} and {target} share layer {LAYERS[source]}; only {sorted(SIDEWAYS)}"
            )
    return sorted(found)


def test_the_graph_is_read() -> None:
    """Guards the reader: edges that exist today must be found, of every kind of import statement."""
    assert len(MODULES) > 50 and f"{ROOT}.errors" in MODULES
    pairs = {(edge.source, edge.target) for edge in EDGES}
    assert (f"{ROOT}.interface.find", f"{ROOT}.interface.heads") in pairs  # from a.b import c
    assert (f"{ROOT}.cli", f"{ROOT}.cli.main") in pairs  # a package's re-export
    assert (f"{ROOT}", f"{ROOT}.inference.predictor") in pairs  # TYPE_CHECKING and function level
    assert (f"{ROOT}.interface.find", f"{ROOT}.interface") not in pairs  # own package: not run again


def test_the_checks_report_what_they_should() -> None:
    """The cycle finder and the layering rule on a made-up graph."""
    edges = [
        Edge("findlit.a", "findlit.b", 1),
        Edge("findlit.b", "findlit.c", 2),
        Edge("findlit.c", "findlit.a", 3),
        Edge("findlit.c", "findlit.d", 4),
    ]
    chain = "findlit.a (line 1) -> findlit.b (line 2) -> findlit.c (line 3) -> findlit.a"
    assert find_cycles(edges) == [chain]
    assert find_cycles([edges[1], edges[2], edges[0]]) == [chain]  # whichever node it starts from
    assert find_cycles(edges[1:]) == []
    cases = {
        ("findlit.tasks.base", "findlit.interface.find"): False,
        ("findlit.interface.find", "findlit.tasks.base"): True,  # upwards
        ("findlit.data.records", "findlit.encoders.spec"): False,  # allowed sideways
        ("findlit.encoders.spec", "findlit.data.records"): True,  # the other way
        ("findlit.outputs.overlay", "findlit.metrics.panoptic"): True,  # sideways, not allowed
        ("findlit.errors", "findlit.data.records"): True,  # a helper imports a package
        ("findlit.data.records", "findlit.errors"): False,
        ("findlit.tasks.base", "findlit"): True,  # the root
        ("findlit.cli.main", "findlit"): False,
    }
    for (source, target), wrong in cases.items():
        assert bool(layering_violations([Edge(source, target, 1)])) == wrong, (source, target)


def test_no_import_cycles() -> None:
    cycles = find_cycles(EDGES)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_imports_follow_the_layers() -> None:
    violations = layering_violations(EDGES)
    assert not violations, "imports against the layering:\n" + "\n".join(violations)


def test_every_layer_is_a_package_of_findlit() -> None:
    packages = {name.split(".")[1] for name, (_, package) in MODULES.items() if package and name != ROOT}
    assert packages == set(LAYERS), "a top-level package missing from LAYERS, or one that is gone"


@pytest.mark.parametrize("package", sorted(name for name, (_, is_package) in MODULES.items() if is_package))
def test_every_package_says_what_it_holds_and_what_it_may_import(package: str) -> None:
    path, _ = MODULES[package]
    docstring = ast.get_docstring(ast.parse(path.read_text()))
    assert docstring, f"{path} has no docstring"
    if package.count(".") == 1:  # a layer: its docstring states its imports
        assert "May import" in docstring, f"{path}: the docstring should say what the package may import"
