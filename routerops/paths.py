"""Where the project finds things. The shared offline data sits beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["REPO_ROOT", "default_pool_file", "project_root", "runs_dir", "shared_data_dir"]

# Where this package's source lives. Stages and commands act on `project_root()` instead, so
# that a second checkout (a clone, a test's scratch repo) never touches this one's files.
REPO_ROOT = Path(__file__).resolve().parents[1]


def project_root() -> Path:
    """`$ROUTEROPS_ROOT`; else the working directory when it is a RouterOps project (DVC runs
    stage commands from the repository root); else the package's own checkout."""
    env = os.environ.get("ROUTEROPS_ROOT")
    if env:
        return Path(env)
    cwd = Path.cwd()
    if (cwd / "params.yaml").is_file() and (cwd / "pool.yaml").is_file():
        return cwd
    return REPO_ROOT


def shared_data_dir() -> Path:
    """`$ROUTEROPS_SHARED_DATA`, else `../shared/data` beside the project."""
    env = os.environ.get("ROUTEROPS_SHARED_DATA")
    return Path(env) if env else project_root().parent / "shared" / "data"


def default_pool_file() -> Path:
    return Path(os.environ.get("ROUTEROPS_POOL", project_root() / "pool.yaml"))


def runs_dir() -> Path:
    """Where stages write run outputs: `$ROUTEROPS_RUNS_DIR`, else `runs/` in the repository."""
    return Path(os.environ.get("ROUTEROPS_RUNS_DIR", project_root() / "runs"))
