"""The package's layers, from its code: every import points down the layer order or
stays in its layer, and no modules import each other in a circle.

The order is defined here, once; CONTRIBUTING.md's map lists the layers in the same
order (checked below). Imports are read with `ast` from every module, those inside
functions and under `if TYPE_CHECKING:` included, as
the import map of issue 23 (`import_circles.py`) reads them.
"""

from __future__ import annotations

import ast
import functools
import re

from tests.support import REPO

PACKAGE = REPO / "lrresearch"

# Bottom to top. A module may import its own layer and the layers before it.
# "root" is the package's own modules (`checks`, `keras_classes`, `moved`, `__init__`).
LAYERS = (
    "root",
    "logs",
    "analysis",
    "workloads",
    "optimizers",
    "controllers",
    "step",
    "training",
    "keras_fit",
    "config",
    "studies",
    "cli",
)
# `python -m lrresearch` runs the command line: the entry point sits with it.
ENTRY_POINTS = {"lrresearch.__main__": "cli"}


@functools.cache
def modules() -> dict[str, ast.Module]:
    """`{dotted name: parsed source}` of every module of the package (a package's
    `__init__.py` under the package's name)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = ast.parse(path.read_text(), str(path))
    return found


def is_package(name: str) -> bool:
    return (REPO / name.replace(".", "/") / "__init__.py").exists()


def imported(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """The package's modules that `name` imports anywhere in its code; not the
    packages enclosing it, which any import of it runs first."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".") if is_package(name) else name.split(".")[:-1]
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        out |= {t for t in targets if t in known and t != name and not name.startswith(t + ".")}
    return out


def layer(name: str) -> str:
    """The layer of a module: its subpackage under `lrresearch`, else "root"."""
    if name in ENTRY_POINTS:
        return ENTRY_POINTS[name]
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and is_package(".".join(parts[:2])) else "root"


@functools.cache
def import_graph() -> dict[str, set[str]]:
    """`{module: the package's modules it imports}` (read once per session)."""
    trees = modules()
    return {name: imported(name, tree, set(trees)) for name, tree in trees.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_is_in_a_known_layer():
    unknown = {name: layer(name) for name in modules() if layer(name) not in LAYERS}
    assert unknown == {}, f"add these layers to LAYERS (in order) and to CONTRIBUTING.md: {unknown}"


def test_no_import_circle():
    found = circles(import_graph())
    assert found == [], "modules that import each other: " + "; ".join(map(", ".join, found))


def test_imports_point_down_the_layers():
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = [
        f"{importer} ({layer(importer)}) imports {target} ({layer(target)}), a layer above it"
        for importer, targets in sorted(import_graph().items())
        for target in sorted(targets)
        if rank[layer(target)] > rank[layer(importer)]
    ]
    order = " < ".join(LAYERS)
    assert upward == [], f"layer order {order}:\n" + "\n".join(upward)


def test_contributing_map_lists_the_layers_in_order():
    """CONTRIBUTING.md's map: one row per layer, bottom to top, named in its first cell
    (`logs/`; the root modules as `checks.py`, ...)."""
    text = (REPO / "CONTRIBUTING.md").read_text()
    section = text.split("## Map of the code", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if re.match(r"\|\s*`", line)]
    listed = []
    for row in rows:
        first = re.match(r"\|\s*`([\w.]+)/?`", row).group(1)
        listed.append("root" if first.endswith(".py") else first)
    assert listed == list(LAYERS), "CONTRIBUTING.md's map, in LAYERS order"
