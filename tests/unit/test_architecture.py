"""The house's architecture, read from the source: no import circle among pgd's modules, and every import
between layers points down (``pgd/`` folders are the layers, see README "Layout" and DESIGN.md)."""

from __future__ import annotations

import ast
from pathlib import Path

PGD = Path(__file__).resolve().parents[1] / "pgd"

#: pgd's layers, bottom first; a module may import its own layer and the layers below it.
LAYERS = ["ground", "runtime", "data", "device", "comm", "loader", "local", "strategies", "optim", "outputs",
          "training", "evaluation", "bench", "cli"]
#: Top-level modules and their layer (every other module's layer is its folder).
GROUND = {"pgd", "pgd.errors", "pgd.fileio", "pgd.config"}
TOP = {"pgd.__main__": "cli"}
#: The package's public names loaded on first use (module ``__getattr__``): ``pgd.load_model`` is the Python
#: API of a trained model; the only upward edge, taken only when a user asks for it.
LAZY_EXPORTS = {("pgd", "pgd.evaluation.linear_model")}


def modules() -> dict[str, Path]:
    """Every module of pgd by its dotted name (packages by their ``__init__``)."""
    found = {}
    for path in PGD.rglob("*.py"):
        name = ".".join(("pgd",) + path.relative_to(PGD).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports(name: str, path: Path, known: dict) -> set[str]:
    """The pgd modules ``name`` imports anywhere in its source (function-local imports count too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(target for target in names if target in known and target != name)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def layer(name: str) -> str:
    if name in GROUND:
        return "ground"
    if name in TOP:
        return TOP[name]
    return name.split(".")[1]


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The circles found by a depth-first search (empty when the graph is acyclic)."""
    state, stack, found = {}, [], []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return found


def test_the_checks_can_fail():
    assert cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert LAYERS.index(layer("pgd.cli.app")) > LAYERS.index(layer("pgd.training.sync"))


def test_every_module_has_a_layer():
    assert {layer(name) for name in modules()} <= set(LAYERS)


def test_no_import_circle():
    assert cycles(graph()) == []


def test_every_import_points_down():
    upward = [f"{name} ({layer(name)}) imports {target} ({layer(target)})"
              for name, targets in graph().items() for target in sorted(targets)
              if LAYERS.index(layer(target)) > LAYERS.index(layer(name)) and (name, target) not in LAZY_EXPORTS]
    assert upward == []


def test_test_modules_have_unique_names():
    """pytest imports test modules by their base name (no packages under tests/): two folders with the same
    file name stop the whole suite at collection."""
    tests = Path(__file__).resolve().parents[1]
    names = [path.name for path in tests.rglob("test_*.py") if "fake_cupy" not in path.parts]
    assert sorted(name for name in set(names) if names.count(name) > 1) == []
