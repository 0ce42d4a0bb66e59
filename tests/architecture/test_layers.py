"""The import graph: layers run one way, no cycle between modules, project imports at the top of the file.

The graph comes from grimp (the engine behind import-linter), which reads every import statement,
function-local ones included, so an import hidden inside a function cannot hide a cycle.
"""

from __future__ import annotations

import ast
import copy
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT_PACKAGES = ("backend", "app")


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*PROJECT_PACKAGES)


def module_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components (more than one module) of the module-level import graph."""
    modules = sorted(graph.modules)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan, iterative enough for ~100 modules
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.find_modules_directly_imported_by(v)):
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

    for module in modules:
        if module not in index:
            visit(module)
    return found


def test_cycle_finder_finds_a_planted_cycle(graph):
    graph = copy.deepcopy(graph)
    graph.add_import(importer="backend.errors", imported="backend.inference.predictor")
    cycles = module_cycles(graph)
    assert any({"backend.errors", "backend.inference.predictor"} <= set(c) for c in cycles)


def test_no_import_cycle_between_modules(graph):
    assert module_cycles(graph) == []


def test_every_layer_contract_is_kept():
    """``lint-imports`` checks the layer order and the app/backend contracts in pyproject.toml."""
    done = subprocess.run([str(Path(sys.executable).with_name("lint-imports"))], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "BROKEN" not in done.stdout and done.stdout.count("KEPT") >= 3


def _function_local_project_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if id(node) in top:
            continue
        if isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        if any(name.split(".")[0] in PROJECT_PACKAGES for name in names):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_project_imports_sit_at_the_top_of_each_file():
    """Function-local imports are for heavy third-party libraries only; the project's own go on top."""
    files = sorted(p for package in PROJECT_PACKAGES for p in (ROOT / package).rglob("*.py"))
    assert len(files) > 50
    hidden = [line for path in files for line in _function_local_project_imports(path)]
    assert hidden == []


def test_the_hidden_import_finder_sees_a_function_local_import(tmp_path, monkeypatch):
    sample = ROOT / "backend" / "_sample_for_test.py"
    monkeypatch.setattr(Path, "read_text", lambda self, encoding=None: "def f():\n    from backend.io import bundle\n")
    assert _function_local_project_imports(sample) == ["backend/_sample_for_test.py:2: from backend.io import bundle"]
