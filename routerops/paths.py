"""Where the project finds things. `project_root()` is the one notion of the repository root;
the shared offline data sits beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_params_file", "default_pool_file", "project_root", "runs_dir", "shared_data_dir"]

# The checkout this package was imported from: only the last resort of `project_root()`.
_PACKAGE_CHECKOUT = Path(__file__).resolve().parents[1]


def project_root() -> Path:
    """`$ROUTEROPS_ROOT`; else the working directory when it is a RouterOps project (DVC runs
    stage commands from the repository root); else the checkout this package was imported from.

    Stages and commands act on this root, so a second checkout (a clone, a test's scratch repo)
    never touches this one's files.
    """
    env = os.environ.get("ROUTEROPS_ROOT")
    if env:
        return Path(env)
    cwd = Path.cwd()
    if (cwd / "params.yaml").is_file() and (cwd / "pool.yaml").is_file():
        return cwd
    return _PACKAGE_CHECKOUT


def shared_data_dir() -> Path:
    """`$ROUTEROPS_SHARED_DATA`, else `../shared/data` beside the project."""
    env = os.environ.get("ROUTEROPS_SHARED_DATA")
    return Path(env) if env else project_root().parent / "shared" / "data"


def default_pool_file(root: Path | None = None) -> Path:
    """`$ROUTEROPS_POOL`, else the pool.yaml of `root` (default: `project_root()`)."""
    return Path(os.environ.get("ROUTEROPS_POOL", (root or project_root()) / "pool.yaml"))


def default_params_file(root: Path | None = None) -> Path:
    """The params.yaml of `root` (default: `project_root()`)."""
    return (root or project_root()) / "params.yaml"


def runs_dir(root: Path | None = None) -> Path:
    """Where stages write run outputs: `$ROUTEROPS_RUNS_DIR`, else `runs/` in `root`."""
    return Path(os.environ.get("ROUTEROPS_RUNS_DIR", (root or project_root()) / "runs"))
