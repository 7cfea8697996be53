"""Every stage has the same contract, and flows only orchestrate.

A stage module exposes frozen `Inputs` and `Outputs`, a `run(params, inputs) -> Outputs` that
computes, a `write` that persists, and a thin `main()`; it imports neither the CLI nor another
module's private names. The flow calls tasks and reads files: it does no arithmetic and parses
no text.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
from pathlib import Path

import pytest

from routerops.config import Params

ROOT = Path(__file__).resolve().parents[2]
STAGES = sorted(p.stem for p in (ROOT / "stages").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("name", STAGES)
def test_stage_has_the_contract(name: str) -> None:
    module = importlib.import_module(f"stages.{name}")
    for cls in (module.Inputs, module.Outputs):
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen, f"{name}.{cls.__name__}"
    sig = inspect.signature(module.run)
    assert list(sig.parameters) == ["params", "inputs"], name
    assert (sig.parameters["params"].annotation, sig.parameters["inputs"].annotation, sig.return_annotation) == (
        "Params", "Inputs", "Outputs"), name
    assert callable(module.write) and list(inspect.signature(module.main).parameters) == [], name
    assert module.Params is Params  # the project's one typed params model


def _imports(path: Path) -> list[tuple[str, str]]:
    """(module, imported name) of every `from module import name` in the file."""
    tree = ast.parse(path.read_text())
    return [(n.module or "", a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names]


@pytest.mark.parametrize("path", sorted([*(ROOT / "stages").glob("*.py"), *(ROOT / "flows").glob("*.py")]),
                         ids=lambda p: p.name)
def test_no_stage_or_flow_imports_the_cli_or_a_private_name(path: Path) -> None:
    bad = [(m, n) for m, n in _imports(path) if m == "routerops.cli" or (n.startswith("_") and n != "__future__")]
    plain = [a.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Import) for a in n.names]
    assert bad == [] and "routerops.cli" not in plain


# What parsing text or doing sums looks like in Python source.
_PARSING = {"split", "rsplit", "partition", "rpartition", "splitlines", "startswith", "endswith", "find", "index",
            "replace", "strip", "loads", "search", "match", "findall"}


@pytest.mark.parametrize("flow_file", ["pipeline.py", "price_watch.py", "retrain.py"])
def test_the_flow_does_no_arithmetic_and_parses_no_text(flow_file: str) -> None:
    tree = ast.parse((ROOT / "flows" / flow_file).read_text())
    # `X | None` in an annotation is a BinOp too: a type, not arithmetic
    arithmetic = [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, (ast.BinOp, ast.AugAssign))
                  and not isinstance(n.op, ast.BitOr)]
    calls = [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and n.func.attr in _PARSING]
    builtins = [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                and n.func.id in {"sum", "len", "round", "max", "min", "open", "print"}]
    # `/` between paths is how a flow names a file: allowed, nothing else is
    assert [a for a in arithmetic if " / " not in a] == [] and calls == [] and builtins == []
