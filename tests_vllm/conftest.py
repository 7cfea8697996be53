"""The opt-in vLLM suite (`make test-vllm`): real vLLM serving a trained local router.

Outside pytest's testpaths (`tests`), so `make test` never collects it: it costs minutes of CPU
and a 2.5 GB environment. `make test-vllm` sets the environment below; run by hand, it needs
the same variables. No __init__.py, as under tests/ (importlib mode).

ROUTEROPS_VLLM_PYTHON     the vLLM venv's interpreter (`make vllm-env`)
ROUTEROPS_VLLM_ROUTER     the router directory (a trained local router; `make test-vllm ROUTER=...`)
ROUTEROPS_VLLM_QUESTIONS  test-split questions to compare (default 420, the whole split)
ROUTEROPS_VLLM_LOG        where the server's log goes (default .routerops/test-vllm/vllm.log)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from routerops.config import Params, load_params
from routerops.testing.vllm_server import VllmServer

for _k, _v in {"DO_NOT_TRACK": "1", "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}.items():
    os.environ.setdefault(_k, _v)

REPO_ROOT = Path(__file__).resolve().parents[1]
# float32, the dtype the router is trained and evaluated in: vLLM's "auto" downcasts a float32
# checkpoint to the platform's first dtype (bfloat16 here; vllm/config/model.py,
# _resolve_auto_dtype, 0.32.0), whose rounding can flip a near-tied greedy choice.
SERVER_ARGS = ("--dtype", "float32", "--seed", "0")


def _env_path(name: str, default: Path | None = None) -> Path:
    value = os.environ.get(name)
    if not value and default is None:
        pytest.fail(f"{name} is not set; run the suite with `make test-vllm`")
    path = Path(value) if value else default
    assert path is not None
    return path if path.is_absolute() else REPO_ROOT / path


@pytest.fixture(scope="session")
def params() -> Params:
    return load_params(REPO_ROOT / "params.yaml")


@pytest.fixture(scope="session")
def router_dir() -> Path:
    path = _env_path("ROUTEROPS_VLLM_ROUTER")
    if not (path / "config.json").is_file():
        pytest.fail(f"{path}: no trained router (config.json missing); train one (`make demo`) or pass ROUTER=DIR")
    return path


@pytest.fixture(scope="session")
def questions_wanted() -> int:
    return int(os.environ.get("ROUTEROPS_VLLM_QUESTIONS", "420"))


@pytest.fixture(scope="session")
def vllm(router_dir: Path) -> Iterator[VllmServer]:
    """One vLLM server for the session (start-up takes minutes on 2 cores), stopped at the end."""
    server = VllmServer(_env_path("ROUTEROPS_VLLM_PYTHON"), router_dir,
                        _env_path("ROUTEROPS_VLLM_LOG", REPO_ROOT / ".routerops" / "test-vllm" / "vllm.log"),
                        extra_args=SERVER_ARGS)
    with server:
        yield server
