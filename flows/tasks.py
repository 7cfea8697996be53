"""Small Prefect tasks shared by flows: run a command or stage, publish artifacts.

Tasks shell out (the same commands a person or `dvc repro` runs) so that a flow adds
scheduling, retries, timeouts and reporting, never logic of its own.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact

REPO_ROOT = Path(__file__).resolve().parents[1]


class CommandFailed(RuntimeError):
    pass


def run_command(args: list[str], *, echo: bool = True) -> str:
    """Run in the repo root, stream output, and fail with the command's tail on error."""
    proc = subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True)
    if echo and proc.stdout:
        sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        raise CommandFailed(f"{' '.join(args)} exited {proc.returncode}:\n{tail}")
    return proc.stdout


@task(name="validate-pool", timeout_seconds=120)
def validate_pool(pool_file: str = "pool.yaml") -> str:
    return run_command([sys.executable, "-m", "routerops.cli", "pool", "validate", pool_file])


@task(name="run-stage", timeout_seconds=1800, task_run_name="stage-{module}")
def run_stage(module: str) -> str:
    return run_command([sys.executable, "-m", f"stages.{module}"])


@task(name="publish-markdown", timeout_seconds=60)
def publish_markdown(key: str, markdown: str, description: str) -> None:
    create_markdown_artifact(key=key, markdown=markdown, description=description)
