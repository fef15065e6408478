"""The package's shape: no import cycles, and the reading side never loads the training loop."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _modules():
    """Every module of pyrovae/ and cli/ (imported as pyrovae.cli) and the pyrovae modules it
    imports anywhere in its body, functions included."""
    names = {}
    for folder, package in (("pyrovae", "pyrovae"), ("cli", "pyrovae.cli")):
        for path in (ROOT / folder).glob("*.py"):
            names[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    edges = {}
    for name, path in names.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            imported |= {t for t in targets if t in names and t != name}
        edges[name] = imported - {"pyrovae", "pyrovae.cli"}  # the packages' own __init__ re-export lazily
    return edges


def test_no_module_imports_itself_back():
    edges = _modules()

    def reaches(start, goal, seen):
        return any(n == goal or (n not in seen and not seen.add(n) and reaches(n, goal, seen)) for n in edges[start])

    cycles = sorted(name for name in edges if reaches(name, name, set()))
    assert not cycles, f"modules on an import cycle: {', '.join(cycles)}"


def _loaded_by(*modules):
    code = f"import sys, {', '.join(modules)}; print(' '.join(sys.modules))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()


def test_the_reading_side_never_loads_the_training_loop():
    loaded = _loaded_by("pyrovae.rundir", "pyrovae.exported", "pyrovae.analysis", "pyrovae.plots", "pyrovae.report")
    assert not {"pyrovae.run", "pyrovae.train", "pyrovae.lock", "pyrovae.tracking"} & set(loaded)
    # A training callback is part of training, but not of its orchestration.
    assert "pyrovae.run" not in _loaded_by("pyrovae.tracking")
