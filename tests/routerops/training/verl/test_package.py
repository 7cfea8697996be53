"""The package boundary: importing it never loads verl, and nothing outside it imports verl."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = "routerops/training/verl"
SCANNED = ("routerops", "stages", "flows", "services", "infra", "bench")
HEAVY = ("verl", "ray", "hydra", "omegaconf", "torch")


def test_importing_the_backend_does_not_import_verl(repo_root: Path) -> None:
    code = "\n".join([
        "import importlib, pkgutil, sys",
        "import routerops.training.verl as pkg",
        "names = sorted(m.name for m in pkgutil.iter_modules(pkg.__path__))",
        "assert {'agent_loop', 'costs', 'launch', 'overrides', 'reward', 'rl_math', 'runtime', 'validation'}"
        " <= set(names), names",
        "mods = {n: importlib.import_module(f'{pkg.__name__}.{n}') for n in names}",
        "assert mods['agent_loop'].MODULE == 'routerops.training.verl.agent_loop'",
        "assert mods['reward'].MODULE == 'routerops.training.verl.reward'",
        f"bad = [x for x in {HEAVY!r} if x in sys.modules]",
        "assert not bad, bad",
    ])
    subprocess.run([sys.executable, "-c", code], check=True, cwd=repo_root, timeout=60)


def verl_imports(path: Path) -> list[int]:
    """Line numbers of every import of the top-level package `verl` in a file, at any depth."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Name) and node.func.id == "__import__")
                   or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"))):
            names = [node.args[0].value]
        else:
            continue
        if any(name.split(".")[0] == "verl" for name in names):
            lines.append(node.lineno)
    return sorted(lines)


def test_only_the_verl_package_imports_verl(repo_root: Path) -> None:
    files = sorted(p for d in SCANNED if (repo_root / d).is_dir() for p in (repo_root / d).rglob("*.py"))
    assert any(p.parent.name == "stages" for p in files) and len(files) > 20
    inside = [p for p in files if p.relative_to(repo_root).as_posix().startswith(PACKAGE + "/")]
    assert inside and any(verl_imports(p) for p in inside)  # the check sees the package's own imports
    offenders = [f"{p.relative_to(repo_root)}:{n}" for p in files if p not in inside for n in verl_imports(p)]
    assert not offenders, f"only {PACKAGE}/ may import verl; imported in: {', '.join(offenders)}"
