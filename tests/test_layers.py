"""The package's layers import only downward and its modules form no import cycle.

The layers contract is ``[tool.importlinter]`` in pyproject.toml, checked by import-linter; the
cycle check below reads every import (module-level or inside a function) with ``ast``. Each is
also run on a copy of the package with one bad import added, to show it would catch it.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "lmforge"


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """Run import-linter with the project's contract on the package under ``root/src``."""
    code = ("import sys; from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(no_cache=True, no_logo=True))")
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    return subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True,
                          text=True, timeout=120)


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, anywhere in its code. An import of a
    package's own ``__init__`` from inside it is left out (the package face, not a cycle)."""
    name = package.name
    files = {".".join((name, *p.relative_to(package).with_suffix("").parts)).removesuffix(".__init__"): p
             for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        base = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                parts = base[:len(base) - node.level + 1] if node.level else []
                target = ".".join(parts + (node.module.split(".") if node.module else []))
                candidates = [f"{target}.{a.name}" for a in node.names] + [target]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            for cand in candidates:
                while cand and cand not in files:
                    cand = cand.rpartition(".")[0]
                if cand and cand != mod and not mod.startswith(cand + "."):
                    graph[mod].add(cand)
    faces = {m for m, p in files.items() if p.name == "__init__.py"}
    return {m: deps - faces for m, deps in graph.items() if m not in faces}


def import_cycles(package: Path) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    graph = import_graph(package)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            nxt = next(edges, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    cycles.append(sorted(comp))
    return cycles


def copy_with_import(tmp: Path, module: str, line: str) -> Path:
    """A copy of the project (pyproject.toml + src/lmforge) with ``line`` appended to ``module``
    (a path under src/lmforge) inside a function, as a lazy import would be."""
    shutil.copy(REPO / "pyproject.toml", tmp / "pyproject.toml")
    shutil.copytree(PACKAGE, tmp / "src" / "lmforge",
                    ignore=shutil.ignore_patterns("__pycache__", "assets"))
    target = tmp / "src" / "lmforge" / module
    target.write_text(target.read_text(encoding="utf-8") + f"\n\ndef _added():\n    {line}\n",
                      encoding="utf-8")
    return tmp


def test_layers_import_only_downward():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_an_upward_import_breaks_the_layers_contract(tmp_path):
    # models sits below hub: a lazy import of the loader from models/ is the mistake to catch.
    root = copy_with_import(tmp_path, "models/io.py", "from ..hub import load_model")
    result = lint_imports(root)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and "lmforge.models.io -> lmforge.hub" in result.stdout


def test_a_module_in_no_layer_breaks_the_layers_contract(tmp_path):
    # Exhaustive: a new top-level module must be given its place in pyproject.toml's layers.
    root = copy_with_import(tmp_path, "hub.py", "pass")
    (root / "src" / "lmforge" / "serve.py").write_text('"""Serving."""\n', encoding="utf-8")
    result = lint_imports(root)
    assert result.returncode != 0 and "lmforge.serve" in result.stdout + result.stderr


def test_no_import_cycles():
    assert import_cycles(PACKAGE) == []


def test_a_lazy_import_cycle_is_found(tmp_path):
    # prepare imports layout at module level; layout importing prepare back closes a cycle.
    root = copy_with_import(tmp_path, "data/layout.py", "from .prepare import prepare_corpus")
    assert import_cycles(root / "src" / "lmforge") == [["lmforge.data.layout", "lmforge.data.prepare"]]
