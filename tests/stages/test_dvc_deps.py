"""dvc.yaml lists, for every stage, exactly the project's Python files the stage runs.

The list is the stage module's static import closure inside the repository
(`routerops.codebase.import_closure`), so a dependency can neither be forgotten (a change that
should re-run the stage would not) nor linger (a change to unrelated code would re-run it).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

from routerops.codebase import import_closure

REPO = Path(__file__).resolve().parents[2]


def stage_modules(dvc_yaml: dict) -> dict[str, tuple[str, ...]]:
    """Stage name -> the module its `cmd` runs (`python -m stages.<name>`), and the modules whose
    code it ships (`BUNDLED_CODE`: the Bento that package_router builds carries the service)."""
    out = {}
    for name, stage in dvc_yaml["stages"].items():
        cmd = stage["cmd"].split()
        assert cmd[:2] == ["python", "-m"], f"stage {name}: cmd {stage['cmd']!r} is not `python -m MODULE`"
        out[name] = (cmd[2], *getattr(importlib.import_module(cmd[2]), "BUNDLED_CODE", ()))
    return out


def python_deps(stage: dict, root: Path) -> set[str]:
    """The Python files a stage's deps cover (a directory dep covers every .py file under it)."""
    files: set[str] = set()
    for dep in stage.get("deps", []):
        path = root / dep
        if path.is_dir():
            files |= {p.relative_to(root).as_posix() for p in path.rglob("*.py") if "__pycache__" not in p.parts}
        elif dep.endswith(".py"):
            files.add(dep)
    return files


def dep_problems(dvc_yaml: dict, root: Path) -> list[str]:
    problems = []
    for name, module in stage_modules(dvc_yaml).items():
        stage = dvc_yaml["stages"][name]
        gone = [d for d in stage.get("deps", []) if d.endswith(".py") and not (root / d).is_file()]
        problems += [f"stage {name}: dep {d} does not exist" for d in gone]
        closure = set(import_closure(module, root))
        listed = python_deps(stage, root)
        runs = " + ".join(module)
        problems += [f"stage {name}: dvc.yaml misses {f} (imported by {runs})" for f in sorted(closure - listed)]
        problems += [f"stage {name}: dvc.yaml lists {f}, which {runs} does not import" for f in sorted(listed - closure)]
    return problems


def test_every_stage_lists_exactly_the_code_it_runs() -> None:
    dvc_yaml = yaml.safe_load((REPO / "dvc.yaml").read_text())
    problems = dep_problems(dvc_yaml, REPO)
    hint = "\n".join(f"{name}: {list(import_closure(m, REPO))}" for name, m in stage_modules(dvc_yaml).items())
    assert not problems, "\n".join(problems) + "\n\nEach stage's code, for dvc.yaml:\n" + hint


def test_a_dropped_dep_is_named_with_its_stage_and_file() -> None:
    dvc_yaml = yaml.safe_load((REPO / "dvc.yaml").read_text())
    deps = dvc_yaml["stages"]["evaluate_router"]["deps"]
    deps.remove("routerops/runtime.py")
    deps.append("routerops/snapshot.py")
    assert dep_problems(dvc_yaml, REPO) == [
        "stage evaluate_router: dvc.yaml misses routerops/runtime.py (imported by stages.evaluate_router)",
        "stage evaluate_router: dvc.yaml lists routerops/snapshot.py, which stages.evaluate_router does not import",
    ]


def test_a_directory_dep_covers_its_python_files_and_pycache_is_ignored_by_dvc() -> None:
    stage = {"deps": ["routerops/candidates"]}
    covered = python_deps(stage, REPO)
    assert covered == {p.relative_to(REPO).as_posix() for p in (REPO / "routerops" / "candidates").glob("*.py")}
    ignored = (REPO / ".dvcignore").read_text().split()
    assert {"__pycache__/", "*.pyc"} <= set(ignored)


@pytest.mark.parametrize(("source", "expected"), [
    ("import pkg.mod\n", ["pkg/__init__.py", "pkg/mod.py"]),
    ("from pkg import mod\n", ["pkg/__init__.py", "pkg/mod.py"]),
    ("from pkg.mod import name\n", ["pkg/__init__.py", "pkg/mod.py"]),
    ("from . import sibling\n", ["pkg/__init__.py", "pkg/sibling.py"]),
    ("def f():\n    import pkg.lazy\n", ["pkg/__init__.py", "pkg/lazy.py"]),
    ("import json, numpy\n", ["pkg/__init__.py"]),  # the package of the module itself runs too
])
def test_import_closure_follows_every_form_of_import(tmp_path: Path, source: str, expected: list[str]) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    for name in ("__init__", "mod", "sibling", "lazy"):
        (pkg / f"{name}.py").write_text("")
    (pkg / "start.py").write_text(source)
    assert import_closure(["pkg.start"], tmp_path) == tuple(sorted({"pkg/start.py", *expected}))


def test_import_closure_is_transitive(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("import b\n")
    (tmp_path / "b.py").write_text("from c import x\n")
    (tmp_path / "c.py").write_text("x = 1\n")
    (tmp_path / "d.py").write_text("")
    assert import_closure(["a"], tmp_path) == ("a.py", "b.py", "c.py")
