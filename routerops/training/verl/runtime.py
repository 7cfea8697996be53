"""Per-process runtime of the verl workers: params, pool and candidate backend, built once per process.

The agent loop and the reward function run in Ray worker processes started by verl. They read
our params from, in order: the `params_path` keyword (written by the dry run into the agent-loop
YAML and into `reward.custom_reward_function.reward_kwargs`), else the file named by
`$ROUTEROPS_PARAMS`, else the repository's params.yaml. The pool file works the same way
(`pool_path`, `$ROUTEROPS_POOL`, pool.yaml); the replay data directory is
`$ROUTEROPS_SHARED_DATA` or ../shared/data. The run budget is the ledger file `ledger_path`
(written by the dry run into the agent-loop YAML: `<checkpoint_dir>/run_budget.json`), shared by
every agent-loop worker of the run and kept across resumes; without one, each process has its own.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from routerops.config import Params, load_params
from routerops.paths import default_pool_file, project_root, shared_data_dir
from routerops.pool import Pool, load_pool

if TYPE_CHECKING:  # only for annotations
    from routerops.runtime import Backends

__all__ = ["PARAMS_ENV", "POOL_ENV", "TELEMETRY_ENV", "ProcessRuntime", "per_process", "process_runtime",
           "resolve_params_path", "resolve_pool_path"]

PARAMS_ENV = "ROUTEROPS_PARAMS"
POOL_ENV = "ROUTEROPS_POOL"
# Telemetry off in every process verl starts (Ray usage stats, wandb, vLLM usage reports).
TELEMETRY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "WANDB_MODE": "disabled", "DO_NOT_TRACK": "1",
                 "VLLM_NO_USAGE_STATS": "1", "TOKENIZERS_PARALLELISM": "false"}


def resolve_params_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """`explicit`, else `$ROUTEROPS_PARAMS`, else the repository's params.yaml."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(PARAMS_ENV)
    return Path(env) if env else project_root() / "params.yaml"


def resolve_pool_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """`explicit`, else `$ROUTEROPS_POOL`, else the repository's pool.yaml."""
    return Path(explicit) if explicit else default_pool_file()


@dataclass
class ProcessRuntime:
    params: Params
    pool: Pool
    backends: Backends


_T = TypeVar("_T")
_RUNTIMES: dict[tuple[str, ...], ProcessRuntime] = {}
_RUNTIME_LOCK = threading.Lock()


def per_process(cache: dict[tuple[str, ...], _T], lock: threading.Lock, params_path: str | None,
                pool_path: str | None, build: Callable[[Params, Pool], _T], *extra_key: str) -> _T:
    """Build once per (params file, pool file, *extra_key) and process, then reuse."""
    pp, pl = resolve_params_path(params_path).resolve(), resolve_pool_path(pool_path).resolve()
    key = (str(pp), str(pl), *extra_key)
    with lock:
        if key not in cache:
            cache[key] = build(load_params(pp), load_pool(pl))
        return cache[key]


def process_runtime(params_path: str | None, pool_path: str | None,
                    ledger_path: str | None = None) -> ProcessRuntime:
    """One runtime per (params, pool, ledger) and process.

    verl instantiates an agent loop per trajectory; loading the quality matrix (~8 MB of JSON)
    or opening an HTTP client per trajectory would dominate rollout time, so they are built once.
    """
    from routerops.runtime import build_backend

    def build(params: Params, pool: Pool) -> ProcessRuntime:
        backends = build_backend(params.candidates, data_dir=shared_data_dir(),
                                 include_prompt_cost=params.rewards.include_prompt_cost,
                                 ledger_path=Path(ledger_path) if ledger_path else None)
        return ProcessRuntime(params, pool, backends)

    return per_process(_RUNTIMES, _RUNTIME_LOCK, params_path, pool_path, build, str(ledger_path or ""))
