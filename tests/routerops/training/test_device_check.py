"""bench/device_check.py on CPU: every check runs and passes, the JSON holds the rows, failures stay
rows of the table, and bad arguments are refused with exact messages. Nothing here depends on timing."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

# The whole CPU run takes ~35 s of CPU time on an idle 2-core machine (a third of it importing verl);
# the module fixture runs it once, inside the first test that asks for it, so each of those may
# take that long on a loaded machine.
RUN_TIMEOUT_S = 600
NAMES = ["environment", "verl import", "generate", "grpo step", "verl math", "bf16 vs fp32"]


@pytest.fixture(scope="module")
def dc(repo_root: Path) -> ModuleType:
    """The script, imported from its file (bench/ is no package)."""
    name = "routerops_bench_device_check"
    spec = importlib.util.spec_from_file_location(name, repo_root / "bench" / "device_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def run_main(dc: ModuleType, argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = dc.main(argv)
        except SystemExit as exc:  # argparse's errors
            code = exc.code
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def cpu_run(dc: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict[str, Any], str]:
    out = tmp_path_factory.mktemp("device-check") / "checks.json"
    code, printed, _ = run_main(dc, ["--device", "cpu", "--out", str(out)])
    return code, json.loads(out.read_text()), printed


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT_S)
def test_every_check_runs_and_passes_on_cpu(dc: ModuleType, cpu_run: tuple[int, dict[str, Any], str]) -> None:
    code, report, _ = cpu_run
    assert [name for name, _, _ in dc.CHECKS] == NAMES
    assert code == 0 and report["ok"] is True and report["device"] == "cpu"
    assert [r["check"] for r in report["checks"]] == NAMES
    for r in report["checks"]:
        assert set(r) == {"check", "device", "ok", "seconds", "detail", "error", "peak_mib"}
        assert r["ok"] is True and r["error"] is None, r
        assert r["device"] == "cpu" and r["peak_mib"] is None  # peak memory is CUDA's alone
        assert r["seconds"] >= 0 and r["detail"]


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT_S)
def test_the_rows_say_what_ran(cpu_run: tuple[int, dict[str, Any], str], repo_root: Path) -> None:
    from routerops.config import load_params

    lp = load_params(repo_root / "params.yaml").train_router.local
    batch = lp.questions_per_step * lp.group_size
    detail = {r["check"]: r["detail"] for r in cpu_run[1]["checks"]}
    assert "verl 0.9.1 core_algos through rl_math" in detail["verl import"]
    assert f"{batch} prompts of" in detail["generate"] and "one batch" in detail["generate"]
    assert f"<= {lp.max_tokens_per_turn} new" in detail["generate"]
    assert detail["grpo step"].startswith(f"{batch} sampled + {lp.questions_per_step} scripted episodes;")
    # On CPU the "device" copy is the CPU itself: the same calls, bit for bit.
    assert f"{batch}x64 on cpu vs cpu, max |diff|: advantages 0.0e+00, pg_loss 0.0e+00, kl 0.0e+00, grad 0.0e+00" \
        in detail["verl math"]
    assert "(limit 0.1)" in detail["bf16 vs fp32"]


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT_S)
def test_the_printed_table_has_one_ok_row_per_check(cpu_run: tuple[int, dict[str, Any], str]) -> None:
    printed = cpu_run[2]
    assert "device check on cpu: 6/6 ok in " in printed
    lines = [line for line in printed.splitlines() if line.startswith("|")]
    assert lines[:2] == ["| check | device | result | seconds | detail |", "|---|---|---|---|---|"]
    cells = [line.split(" | ") for line in lines[2:]]
    assert [c[0].removeprefix("| ") for c in cells] == NAMES
    assert all(c[1] == "cpu" and c[2] == "ok" for c in cells)
    assert all(line.count("|") == 6 for line in lines)  # details never split a row


def boom(exc: BaseException) -> Callable[[Any], str]:
    def check(ctx: Any) -> str:
        raise exc
    return check


RAY_HINT = ("verl imports ray when it is imported, and ray's wheel is too big to carry to the device machine: "
            "rerun with --ray-placeholder")


@pytest.mark.parametrize(("exc", "detail"), [
    (ValueError("model exploded"), "ValueError: model exploded"),
    (RuntimeError("first line\nsecond line"), "RuntimeError: first line"),
    (AssertionError(), "AssertionError: "),
    (ModuleNotFoundError("No module named 'ray'", name="ray"), f"ModuleNotFoundError: No module named 'ray' ({RAY_HINT})"),
    (ModuleNotFoundError("No module named 'tensordict'", name="tensordict"), "ModuleNotFoundError: No module named 'tensordict'"),
], ids=["plain", "multi-line", "empty", "ray-missing", "other-missing"])
def test_a_failed_check_is_a_row_and_the_rest_still_run(dc: ModuleType, monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path, exc: Exception, detail: str) -> None:
    monkeypatch.setattr(dc, "CHECKS", (("environment", dc.check_environment, False), ("boom", boom(exc), False),
                                       ("after", lambda ctx: "still ran", True)))
    code, printed, err = run_main(dc, ["--device", "cpu", "--out", str(tmp_path / "r.json")])
    rows = json.loads((tmp_path / "r.json").read_text())["checks"]
    assert code == 1 and json.loads((tmp_path / "r.json").read_text())["ok"] is False
    assert [(r["check"], r["ok"]) for r in rows] == [("environment", True), ("boom", False), ("after", True)]
    assert rows[1]["detail"] == detail and rows[2]["detail"] == "still ran"
    assert rows[1]["error"].startswith("Traceback (most recent call last):") and rows[0]["error"] is None
    assert "device check on cpu: 2/3 ok in " in printed and "| boom | cpu | FAILED | " in printed
    assert "--- boom failed:\nTraceback (most recent call last):" in err


@pytest.mark.parametrize(("argv", "cuda", "message"), [
    (["--device", "tpu"], False, "--device must be cuda, cpu or auto, not 'tpu'"),
    (["--device", "tpu"], True, "--device must be cuda, cpu or auto, not 'tpu'"),
    (["--device", "CUDA"], True, "--device must be cuda, cpu or auto, not 'CUDA'"),
    (["--device", ""], False, "--device must be cuda, cpu or auto, not ''"),
    (["--device", "cuda"], False, "--device cuda: torch sees no CUDA device here (torch.cuda.is_available() is False)"),
    (["--devices", "cpu"], False, "unrecognized arguments: --devices cpu"),
], ids=["tpu", "tpu-with-cuda", "upper-case", "empty", "cuda-without-cuda", "misspelt-flag"])
def test_bad_arguments_exit_2_with_a_message(dc: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                             argv: list[str], cuda: bool, message: str) -> None:
    # Whether torch sees CUDA is faked, so every case runs the same on any machine.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    code, printed, err = run_main(dc, [*argv, "--out", str(tmp_path / "r.json")])
    assert code == 2 and printed == ""
    assert err.startswith("usage: device_check.py ") and err.splitlines()[-1] == f"device_check.py: error: {message}"
    assert not (tmp_path / "r.json").exists()  # refused before any check ran


@pytest.mark.parametrize(("asked", "cuda", "device"), [
    ("auto", False, "cpu"), ("cpu", False, "cpu"), ("cpu", True, "cpu"),
])
def test_device_resolution(dc: ModuleType, monkeypatch: pytest.MonkeyPatch, asked: str, cuda: bool,
                           device: str) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert dc.resolve_device(argparse.ArgumentParser(), asked) == torch.device(device)


def test_the_ray_placeholder_is_not_used_where_ray_is_installed(dc: ModuleType) -> None:
    pytest.importorskip("ray")
    before = sys.modules.get("ray")
    assert dc.install_ray_placeholder() == "installed; placeholder not needed"
    assert sys.modules.get("ray") is before


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT_S)
def test_the_ray_placeholder_lets_verl_import_without_ray(repo_root: Path) -> None:
    # The device machine has no ray (its wheel is too big to carry), nor transfer_queue, which this
    # venv has and which uses ray at import (verl falls back to stand-ins on its ImportError): hide
    # both, as if absent, and run verl's RL math through rl_math with the placeholder for ray.
    code = textwrap.dedent("""
        import importlib.util, sys
        sys.modules["ray"] = sys.modules["transfer_queue"] = None  # importing them fails as if not installed
        spec = importlib.util.spec_from_file_location("dc", "bench/device_check.py")
        dc = importlib.util.module_from_spec(spec)
        sys.modules["dc"] = dc
        spec.loader.exec_module(dc)
        assert dc.install_ray_placeholder() == "absent; placeholder module used"
        import ray
        assert getattr(ray, dc.PLACEHOLDER_FLAG) is True and isinstance(ray.ObjectRef, type)
        assert not hasattr(ray, "init") and not hasattr(ray, "__file__")
        try:
            ray.get([])
        except AttributeError as exc:
            assert "placeholder and has no 'get'" in str(exc), exc
        else:
            raise AssertionError("ray.get resolved on the placeholder")
        import torch
        from routerops.training.verl import rl_math
        m = torch.ones(2, 3)
        adv = rl_math.grpo_advantages(torch.tensor([[0.0, 0, 1], [0, 0, 0]]), m, __import__("numpy").array(["a", "a"]),
                                        norm_by_std=True)
        assert torch.allclose(adv, torch.tensor([[0.7071] * 3, [-0.7071] * 3]), atol=1e-4), adv
        assert float(rl_math.kl_loss(m, m, m)) == 0.0
        print("verl imported:", "verl.trainer.ppo.core_algos" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S - 30)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "verl imported: True"
