"""Where the project finds things. The shared offline data sits beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["REPO_ROOT", "default_pool_file", "runs_dir", "shared_data_dir"]

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """`$ROUTEROPS_SHARED_DATA`, else `../shared/data` beside the repository."""
    env = os.environ.get("ROUTEROPS_SHARED_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def default_pool_file() -> Path:
    return Path(os.environ.get("ROUTEROPS_POOL", REPO_ROOT / "pool.yaml"))


def runs_dir() -> Path:
    """Where stages write run outputs: `$ROUTEROPS_RUNS_DIR`, else `runs/` in the repository."""
    return Path(os.environ.get("ROUTEROPS_RUNS_DIR", REPO_ROOT / "runs"))
