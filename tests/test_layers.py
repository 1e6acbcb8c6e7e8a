"""The package's layers: each module imports only from its own layer or those below it, never upward,
not even lazily inside a function; and the math a notebook starts with loads without the heavy
libraries (torchvision, torchmetrics, matplotlib) that only data, metrics and plots need."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import helpers

HELPERS = Path(helpers.__file__).parent
LAYERS = helpers.LAYERS


def imports_of(module: str) -> set[str]:
    """Every ``helpers`` module that ``module`` imports anywhere in its file (top level, functions,
    TYPE_CHECKING blocks), relative imports included."""
    tree = ast.parse((HELPERS / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:  # from .x import y / from . import x
                found |= {node.module} if node.module else {a.name for a in node.names}
            elif node.module == "helpers":
                found |= {a.name for a in node.names}
            elif node.module and node.module.startswith("helpers."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("helpers.")}
    return found - {module}


def test_every_module_has_a_layer():
    modules = {p.stem for p in HELPERS.glob("*.py")} - {"__init__"}
    placed = [m for layer in LAYERS.values() for m in layer]
    assert len(placed) == len(set(placed)), "a module placed twice"
    assert modules == set(placed), f"unplaced: {sorted(modules - set(placed))}; gone: {sorted(set(placed) - modules)}"


def test_no_module_imports_from_a_layer_above_its_own():
    rank = {m: i for i, layer in enumerate(LAYERS.values()) for m in layer}
    names = list(LAYERS)
    upward = [
        f"{m} ({names[rank[m]]}) imports {other} ({names[rank[other]]})"
        for m in rank
        for other in sorted(imports_of(m))
        if other in rank and rank[other] > rank[m]
    ]
    assert upward == []


def test_the_imports_have_no_cycle():
    graph = {m: imports_of(m) & {x for layer in LAYERS.values() for x in layer} for layer in LAYERS.values() for m in layer}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        if state.get(m) == 1:
            pytest.fail("import cycle: " + " -> ".join(path[path.index(m):] + [m]))
        if state.get(m) == 2:
            return
        state[m] = 1
        for other in sorted(graph[m]):
            visit(other, path + [m])
        state[m] = 2

    for m in graph:
        visit(m, [])


def test_the_layer_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The check itself: a lazy import of a program from inside a math function is found."""
    fake = tmp_path / "helpers"
    fake.mkdir()
    (fake / "schedules.py").write_text("def f():\n    from helpers.train import main\n    from .bench import x\n")
    monkeypatch.setattr(sys.modules[__name__], "HELPERS", fake)
    assert imports_of("schedules") == {"train", "bench"}


def test_the_math_and_the_training_loop_load_without_the_heavy_libraries():
    """One fresh process imports each module in turn and says what heavy library each one pulled in."""
    modules = ["helpers.diffusion", "helpers.samplers", "helpers.solvers", "helpers.consistency", "helpers.training"]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "    heavy = [m for m in ('torchvision', 'torchmetrics', 'matplotlib') if m in sys.modules]\n"
        "    print(name, ','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert [line for line in out if line.strip() and " " in line.strip()] == [], out
