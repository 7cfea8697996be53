"""Small Prefect tasks shared by flows: run a command, a DVC step, or publish an artifact.

Tasks shell out to the same commands a person runs (`dvc repro`, `dvc push`, `python -m ...`),
so a flow adds scheduling, retries, timeouts and reporting, never logic of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path
from typing import IO, Any

from prefect import task
from prefect.artifacts import create_markdown_artifact

REPO_ROOT = Path(__file__).resolve().parents[1]


class CommandFailed(RuntimeError):
    pass


def _env() -> dict[str, str]:
    # DVC stage commands say `python`: make it this interpreter, whatever PATH the caller had.
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("DVC_NO_ANALYTICS", "1")
    return env


def run_command(args: list[str], *, cwd: Path | None = None, timeout_s: float | None = None,
                extra_env: dict[str, str] | None = None) -> str:
    """Run, streaming stdout and stderr live (progress bars included), and fail with the
    command's last lines on a non-zero exit. Returns the full stdout."""
    proc = subprocess.Popen(args, cwd=cwd or REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**_env(), **(extra_env or {})})
    out: list[bytes] = []
    tail: deque[bytes] = deque(maxlen=400)  # last ~400 chunks of either stream, for the error

    def pump(src: IO[bytes], dst: IO[bytes], keep: list[bytes] | None) -> None:
        for chunk in iter(lambda: src.read1(4096), b""):  # type: ignore[attr-defined]
            dst.write(chunk)
            dst.flush()
            tail.append(chunk)
            if keep is not None:
                keep.append(chunk)

    threads = [threading.Thread(target=pump, args=(proc.stdout, sys.stdout.buffer, out), daemon=True),
               threading.Thread(target=pump, args=(proc.stderr, sys.stderr.buffer, None), daemon=True)]
    for t in threads:
        t.start()
    try:
        code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise CommandFailed(f"{' '.join(args)} did not finish in {timeout_s} s") from None
    for t in threads:
        t.join()
    if code != 0:
        text = b"".join(tail).decode("utf-8", "replace").replace("\r", "\n")
        lines = [ln for ln in text.splitlines() if ln.strip()][-25:]
        raise CommandFailed(f"`{' '.join(args)}` exited {code}:\n" + "\n".join(lines))
    return b"".join(out).decode("utf-8", "replace")


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


@task(name="validate-pool", timeout_seconds=120)
def validate_pool(pool_file: str) -> str:
    return run_command(python_module("routerops.cli", "pool", "validate", pool_file))


@task(name="start-local-s3", timeout_seconds=180, retries=1, retry_delay_seconds=5)
def start_local_s3(repo: Path = REPO_ROOT) -> str:
    """Start (or find running) the loopback S3 store and point DVC's default remote at it."""
    out = run_command(python_module("infra.local.s3", "start"), cwd=repo)
    out += run_command(python_module("infra.local.dvc_remote", "configure"), cwd=repo)
    return out


@task(name="seed-data", timeout_seconds=900)
def seed_data(repo: Path = REPO_ROOT) -> str:
    """Fill data/ and check it is the data version recorded in data.dvc (exit 3 if not)."""
    return run_command(python_module("routerops.cli", "data", "seed", "--dest", str(repo / "data")), cwd=repo)


@task(name="dvc-repro", timeout_seconds=3600)
def dvc_repro(repo: Path = REPO_ROOT) -> str:
    """DVC alone decides what re-runs; a failing stage (e.g. validation) fails this task."""
    return run_command(python_module("dvc", "repro"), cwd=repo)


@task(name="dvc-push", timeout_seconds=1800, retries=2, retry_delay_seconds=10)
def dvc_push(repo: Path = REPO_ROOT) -> str:
    """Push every stage output. One retry layer: botocore would otherwise retry each refused
    connection 5 times per file (minutes against a dead endpoint); here a dead store fails the
    push in seconds and Prefect retries the whole push, which uploads only what is missing."""
    return run_command(python_module("dvc", "push"), cwd=repo, extra_env={"AWS_MAX_ATTEMPTS": "1"})


@task(name="read-metrics", timeout_seconds=30)
def read_metrics(path: str, repo: Path = REPO_ROOT) -> dict[str, Any]:
    return json.loads((repo / path).read_text())


@task(name="run-stage", timeout_seconds=1800, task_run_name="stage-{module}")
def run_stage(module: str, repo: Path = REPO_ROOT) -> str:
    return run_command(python_module(f"stages.{module}"), cwd=repo)


@task(name="publish-markdown", timeout_seconds=60)
def publish_markdown(key: str, markdown: str, description: str) -> None:
    create_markdown_artifact(key=key, markdown=markdown, description=description)
