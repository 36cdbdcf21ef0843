"""What the import-linter contracts (pyproject.toml, run by ``lint-imports``) cannot say about the module graph.

The contracts check the layers (no module imports from a layer above its
own). Left here: no import cycle inside a layer or a subpackage, no private
name reached across modules, and every module importable first, on its own,
in a fresh interpreter.
"""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kspec_fluxcal"


def _module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module, node):
    """Absolute name of the module an ImportFrom node imports from."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    is_package = (PACKAGE.parent / Path(*base) / "__init__.py").is_file()
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports():
    """{module: [(imported module, imported names, line)]} over every import, deferred ones included."""
    graph = {}
    modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    for path in PACKAGE.rglob("*.py"):
        module = _module_name(path)
        edges = []
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                target = _resolve(module, node)
                names = [a.name for a in node.names]
                # `from . import x` imports the submodule x when there is one
                subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
                edges += [(s, [], node.lineno) for s in subs]
                if target in modules and not subs:
                    edges.append((target, names, node.lineno))
            elif isinstance(node, ast.Import):
                edges += [(a.name, [], node.lineno) for a in node.names if a.name in modules]
        graph[module] = edges
    return graph


def _cycles(graph):
    """Every elementary cycle found by depth-first search (as module lists)."""
    found, state, stack = [], {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target, _, _ in graph.get(node, []):
            if target == node or target.startswith(node + ".") or node.startswith(target + "."):
                continue  # a package and its own submodules
            if state.get(target) == "open":
                found.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_the_module_graph_has_no_cycle():
    cycles = _cycles(_imports())
    assert not cycles, "import cycles: " + "; ".join(" → ".join(c) for c in cycles)


def test_the_cycle_check_sees_a_cycle():
    graph = {"p.a": [("p.b", [], 1)], "p.b": [("p.c", [], 1)], "p.c": [("p.a", [], 3)]}
    assert _cycles(graph) == [["p.a", "p.b", "p.c", "p.a"]]


def test_no_private_name_is_imported_from_another_module():
    crossing = [
        f"{module} imports {name} from {target} (line {line})"
        for module, edges in _imports().items()
        for target, names, line in edges
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert not crossing, "\n".join(crossing)


@pytest.mark.parametrize("module", sorted(_imports()))
def test_every_module_imports_on_its_own(module):
    """Each module imports first in a fresh interpreter (no order it relies on) and defines its ``__all__``."""
    code = (f"import importlib\nmodule = importlib.import_module({module!r})\n"
            "missing = [n for n in getattr(module, '__all__', []) if not hasattr(module, n)]\n"
            "assert not missing, f'__all__ names that do not exist: {missing}'")
    path = os.pathsep.join(filter(None, [str(PACKAGE.parent), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "MPLBACKEND": "agg"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
