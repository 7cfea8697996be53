"""The Bento's build config (`[tool.bentoml]` in pyproject.toml) against the code it carries."""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from routerops.codebase import import_closure
from stages.package_router import BUNDLED_CODE

# Installed into every Bento image by BentoML itself.
PROVIDED = {"bentoml"}


def _third_party_imports(files: tuple[str, ...], root: Path) -> set[str]:
    names: set[str] = set()
    for rel in files:
        for node in ast.walk(ast.parse((root / rel).read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    local = {Path(rel).parts[0] for rel in files}
    return {n for n in names if n not in sys.stdlib_module_names and n not in local}


def _pins(lines: list[str]) -> dict[str, str]:
    out = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            out[name.strip().lower().replace("_", "-")] = version.strip()
    return out


def test_the_bento_declares_every_package_its_code_imports_at_the_locked_version(repo_root) -> None:
    config = tomllib.loads((repo_root / "pyproject.toml").read_text())["tool"]["bentoml"]["build"]
    assert config["service"] == "services.router_service:RouterService"
    declared = _pins(config["python"]["packages"])
    assert len(declared) == len(config["python"]["packages"]), "every package is pinned with =="
    files = import_closure(BUNDLED_CODE, repo_root)
    dists = packages_distributions()
    needed = {dists[name][0].lower().replace("_", "-") for name in _third_party_imports(files, repo_root) - PROVIDED}
    assert needed == set(declared), (sorted(needed - set(declared)), sorted(set(declared) - needed))
    locked = _pins((repo_root / "requirements" / "lock.txt").read_text().splitlines()
                   + (repo_root / "requirements" / "torch-constraint.txt").read_text().splitlines())
    assert {name: locked.get(name) for name in declared} == declared


def test_the_bento_includes_the_service_and_its_code(repo_root) -> None:
    config = tomllib.loads((repo_root / "pyproject.toml").read_text())["tool"]["bentoml"]["build"]
    tops = {Path(rel).parts[0] for rel in import_closure(BUNDLED_CODE, repo_root)}
    assert {pattern.split("/", 1)[0] for pattern in config["include"]} == tops == {"routerops", "services"}
