"""The vLLM launcher's failure path, with a real interpreter that has no vLLM (this venv's)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from routerops.testing.vllm_server import VllmServer, VllmStartError, _error_lines


def router_dir(tmp_path: Path) -> Path:
    (tmp_path / "config.json").write_text("{}")
    return tmp_path


def test_a_server_that_exits_raises_with_the_reason_from_its_log(tmp_path: Path) -> None:
    log = tmp_path / "vllm.log"
    server = VllmServer(Path(sys.executable), router_dir(tmp_path), log, startup_timeout_s=60)
    with pytest.raises(VllmStartError) as err:
        server.start()
    assert str(err.value) == (
        f"vLLM exited with code 1 before it was ready; from {log}:\n{Path(sys.executable)}: Error while finding module "
        "specification for 'vllm.entrypoints.openai.api_server' (ModuleNotFoundError: No module named 'vllm')")
    server.stop()  # stopped already: a no-op


def test_missing_interpreter_or_model(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=f"^{re.escape(str(tmp_path / 'py'))}: no vLLM interpreter; "
                                                 r"build it with `make vllm-env`$"):
        VllmServer(tmp_path / "py", tmp_path, tmp_path / "log")
    with pytest.raises(FileNotFoundError, match=f"^{re.escape(str(tmp_path))}: not a HuggingFace model directory"):
        VllmServer(Path(sys.executable), tmp_path, tmp_path / "log")


def test_error_lines_are_the_exceptions_each_once() -> None:
    # vLLM 0.32.0 CPU serving a head_dim-16 model: the worker's error, repeated, then the engine's
    log = "\n".join([
        "(Worker pid=1) INFO 12-03 12:41:39 [cpu_model_runner.py:87] Warming up model for the compilation...",
        "(Worker pid=1) ERROR 12-03 12:41:40 [multiproc_executor.py:1063] Traceback (most recent call last):",
        "(Worker pid=1) ERROR 12-03 12:41:40 [multiproc_executor.py:1063] RuntimeError: Unsupported CPU attention "
        "configuration: head_dim=16 isa=2 kv_cache_idx=0",
        "(Worker pid=1) ERROR 12-03 12:41:40 [multiproc_executor.py:1063] RuntimeError: Unsupported CPU attention "
        "configuration: head_dim=16 isa=2 kv_cache_idx=0",
        "(APIServer pid=2) ERROR 12-03 12:41:40 [async_llm.py:906] vllm.v1.engine.exceptions.EngineDeadError: "
        "EngineCore encountered an issue.",
        'INFO:     127.0.0.1:46526 - "POST /v1/completions HTTP/1.1" 500 Internal Server Error',
    ])
    assert _error_lines(log) == [log.splitlines()[2], log.splitlines()[4]]
    assert _error_lines("no exception\nhere") == ["no exception", "here"]
