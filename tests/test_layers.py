"""The package's layers, read from its imports: no cycle, nothing imported upwards.

The rule is the table of ``docs/design.md`` ("Layers"): a module may import its
own layer and the layers its row names (and the root modules), and nothing
else. Every import counts: at module level, under ``TYPE_CHECKING`` and inside
functions. Imports inside functions must be exactly those the "Lazy imports"
table lists, each with its reason.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
DESIGN = ROOT / "docs" / "design.md"
#: Split a module where it holds two concepts; this catches one that grew past that.
MAX_LINES = 500


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported racefree module
    lazy: bool  # inside a function
    line: int


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in sorted((SRC / "racefree").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _module_level(tree: ast.Module) -> set[int]:
    """The ids of the import nodes that run when the module is imported (or type-checked)."""
    found: set[int] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.add(id(node))
            elif isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(node.orelse)
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
                visit(getattr(node, "finalbody", []))

    visit(tree.body)
    return found


def _imports(module: str, path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(), str(path))
    top = _module_level(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: list[Import] = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                targets.append(sub if sub in MODULES else source)
        else:
            continue
        for target in targets:
            while target not in MODULES and "." in target:
                target = target.rpartition(".")[0]  # import a.b.c binds the package a.b.c
            if target in MODULES and target != module:
                out.append(Import(module, target, id(node) not in top, node.lineno))
    return out


IMPORTS = [imp for module, path in MODULES.items() for imp in _imports(module, path)]


def _cells(row: str) -> list[str]:
    return [cell.strip() for cell in row.strip().strip("|").split("|")]


def _names(cell: str) -> list[str]:
    return re.findall(r"`([\w.]+)`", cell)


def _section(title: str) -> list[list[str]]:
    """The rows (cells) of the first table after the heading ``title`` in docs/design.md."""
    text = DESIGN.read_text()
    start = text.index(f"\n{title}\n") + 1
    rows: list[list[str]] = []
    for line in text[start:].splitlines()[1:]:
        if line.startswith("#"):
            break
        if line.startswith("|") and not set(line) <= set("|-: "):
            rows.append(_cells(line))
    return rows[1:]  # the header row


def _layers() -> tuple[dict[str, str], dict[str, set[str]]]:
    """``name -> layer`` for every name the table lists, and ``layer -> layers it may import``."""
    rows = _section("## Layers")
    layer_of: dict[str, str] = {}
    for cells in rows:
        names = _names(cells[0])
        assert names, f"a layer row names no module: {cells}"
        for name in names:
            layer_of[name] = names[0]
    root = _names(rows[0][0])[0]  # the first row: the modules every layer may use
    allowed: dict[str, set[str]] = {}
    order = [_names(cells[0])[0] for cells in rows]
    for position, cells in enumerate(rows):
        layer = _names(cells[0])[0]
        text = cells[2]
        if text.startswith("every layer"):
            # "every layer" (the top); "every layer above": those listed before it.
            below = order[:position] if "above" in text else order
            may = set(below) - {layer}
        else:
            may = {layer_of[name] for name in _names(text)}
        allowed[layer] = may | {root}
    return layer_of, allowed


LAYER_OF, ALLOWED = _layers()


def _layer(module: str) -> str:
    best = ""
    for name in LAYER_OF:
        # "racefree" (the package's __init__) is a layer of its own, not a prefix of the others.
        inside = module.startswith(name + ".") and name != "racefree"
        if (module == name or inside) and len(name) > len(best):
            best = name
    if not best:
        raise AssertionError(
            f"{module} belongs to no layer of docs/design.md's table: add its package there"
        )
    return LAYER_OF[best]


def test_every_module_belongs_to_a_layer_of_the_table() -> None:
    """A new subpackage (or root module) must be placed in the documented order first."""
    unplaced = []
    for module in MODULES:
        try:
            _layer(module)
        except AssertionError:
            unplaced.append(module)
    assert unplaced == []


def test_the_table_is_an_order() -> None:
    """No two layers may import each other, directly or through others (the table is a DAG)."""
    seen: dict[str, int] = {}

    def visit(layer: str, stack: tuple[str, ...]) -> None:
        if seen.get(layer) == 2:
            return
        assert seen.get(layer) != 1, f"the layer table has a cycle: {' -> '.join(stack)}"
        seen[layer] = 1
        for other in ALLOWED[layer] - {layer}:
            visit(other, (*stack, other))
        seen[layer] = 2

    for layer in ALLOWED:
        visit(layer, (layer,))


def test_no_import_breaks_the_layer_order() -> None:
    """Every import (module level, TYPE_CHECKING or lazy) goes to the same or an allowed layer."""
    bad = [
        f"{imp.source}:{imp.line} imports {imp.target} ({_layer(imp.source)} may not use"
        f" {_layer(imp.target)})"
        for imp in IMPORTS
        if _layer(imp.target) not in ALLOWED[_layer(imp.source)] | {_layer(imp.source)}
    ]
    assert bad == []


def test_no_import_cycle() -> None:
    """The module graph (every import, lazy ones included) has no cycle."""
    graph: dict[str, set[str]] = {module: set() for module in MODULES}
    for imp in IMPORTS:
        graph[imp.source].add(imp.target)
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*stack[stack.index(target):], target]))
            elif target not in state:
                visit(target, stack)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert cycles == []


def test_lazy_imports_are_the_listed_ones() -> None:
    """Imports inside functions are exactly those ``docs/design.md`` lists, with a reason."""
    listed = set()
    for cells in _section("### Lazy imports"):
        assert len(cells) == 3 and cells[2], f"a lazy import without its reason: {cells}"
        (source,) = _names(cells[0])
        for target in _names(cells[1]):
            listed.add((source, target))
    found = {(imp.source, imp.target) for imp in IMPORTS if imp.lazy}
    assert sorted(found - listed) == [], "lazy imports missing from docs/design.md"
    assert sorted(listed - found) == [], "docs/design.md lists lazy imports that are gone"


@pytest.mark.parametrize("package", sorted(
    name for name, path in MODULES.items() if path.name == "__init__.py" and name != "racefree"
))
def test_every_layer_says_what_it_is_and_may_import(package: str) -> None:
    """Each subpackage's docstring says what the layer is and which layers it may use."""
    doc = ast.get_docstring(ast.parse(MODULES[package].read_text()))
    assert doc is not None and len(doc.splitlines()) >= 3, f"{package} has no layer docstring"
    assert "may import" in doc.lower(), f"{package}'s docstring does not say what it may import"


def test_modules_stay_readable_in_one_sitting() -> None:
    """No module grows past ~450 lines without being split by concept."""
    long = {name: n for name, path in MODULES.items()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}
