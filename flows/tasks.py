"""Prefect tasks shared by flows: run a command, a DVC step or a stage, gate on a metric, publish
a file the stages wrote.

Tasks shell out to the same commands a person runs (`dvc repro`, `dvc push`, `python -m ...`),
so a flow adds scheduling, retries, timeouts and reporting, never logic of its own. Reading a
file is the most a task does with an output; the stages write their own summaries.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from routerops.config import load_params
from routerops.paths import default_params_file, default_pool_file, runs_dir
from routerops.progress import PROGRESS_ENV

__all__ = ["CommandFailed", "GateFailed", "Layout", "dvc_push", "dvc_repro", "emit", "gate", "layout", "publish_file",
           "read_metrics", "register_version", "run_command", "run_in_workspace", "run_stage", "running_services",
           "seed_data", "service", "start_local_s3", "validate_pool"]


class CommandFailed(RuntimeError):
    pass


class GateFailed(RuntimeError):
    """A metric the flow gates on says no; nothing after the gate runs."""


def _env() -> dict[str, str]:
    # DVC stage commands say `python`: make it this interpreter, whatever PATH the caller had.
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.setdefault("GX_ANALYTICS_ENABLED", "false")
    if sys.stderr.isatty():  # children's output is piped through us to a terminal: bars may redraw
        env.setdefault(PROGRESS_ENV, "bar")
    return env


def run_command(args: list[str], *, cwd: Path, timeout_s: float | None = None,
                extra_env: dict[str, str] | None = None) -> str:
    """Run, streaming stdout and stderr live (progress included), and fail with the command's
    last lines on a non-zero exit. Returns the full stdout."""
    proc = subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
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

    assert proc.stdout is not None and proc.stderr is not None  # both are PIPEs
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


@dataclass(frozen=True)
class Layout:
    """Where the stages of a project write what the flow reads (from its params.yaml)."""

    pool_file: Path
    validation_metrics: Path
    dataset_summary: Path
    validation_summary: Path
    training_summary: Path
    evaluation_summary: Path
    package_summary: Path
    data_card: Path
    train_metrics: Path
    evaluation_metrics: Path
    samples_dir: Path
    service_dir: Path
    lineage_dir: Path
    price_watch_dir: Path
    retrain_dir: Path  # one folder per pricing id


@task(name="layout", timeout_seconds=30)
def layout(repo: Path) -> Layout:
    params = load_params(default_params_file(repo))
    return Layout(
        pool_file=default_pool_file(repo),
        validation_metrics=repo / params.validate_dataset.metrics,
        dataset_summary=repo / params.build_dataset.out_dir / "summary.md",
        validation_summary=repo / params.validate_dataset.out_dir / "summary.md",
        training_summary=repo / params.train_router.out_dir / "summary.md",
        evaluation_summary=repo / params.evaluate_router.out_dir / "summary.md",
        package_summary=repo / params.package_router.out_dir / "summary.md",
        data_card=repo / params.build_dataset.data_card,
        train_metrics=repo / params.train_router.metrics,
        evaluation_metrics=repo / params.evaluate_router.metrics,
        samples_dir=runs_dir(repo) / "route_samples",
        service_dir=runs_dir(repo) / "ask_service",
        lineage_dir=runs_dir(repo) / "lineage",
        price_watch_dir=runs_dir(repo) / "price_watch",
        retrain_dir=runs_dir(repo) / "retrain",
    )


@task(name="validate-pool", timeout_seconds=120)
def validate_pool(pool_file: Path, repo: Path) -> str:
    return run_command(python_module("routerops.cli", "pool", "validate", str(pool_file)), cwd=repo)


@task(name="start-local-s3", timeout_seconds=180, retries=1, retry_delay_seconds=5)
def start_local_s3(repo: Path) -> str:
    """Start (or find running) the loopback S3 store and point DVC's default remote at it."""
    out = run_command(python_module("infra.local.s3", "start"), cwd=repo)
    out += run_command(python_module("infra.local.dvc_remote", "configure"), cwd=repo)
    return out


@task(name="seed-data", timeout_seconds=900)
def seed_data(repo: Path) -> str:
    """Fill data/ and check it is the data version recorded in data.dvc (exit 3 if not)."""
    return run_command(python_module("routerops.cli", "data", "seed", "--dest", str(repo / "data")), cwd=repo)


@task(name="dvc-repro", timeout_seconds=3600)
def dvc_repro(repo: Path) -> str:
    """DVC alone decides what re-runs; a failing stage (e.g. validation) fails this task."""
    return run_command(python_module("dvc", "repro"), cwd=repo)


@task(name="dvc-push", timeout_seconds=1800, retries=2, retry_delay_seconds=10)
def dvc_push(repo: Path) -> str:
    """Push every stage output. One retry layer: botocore would otherwise retry each refused
    connection 5 times per file (minutes against a dead endpoint); here a dead store fails the
    push in seconds and Prefect retries the whole push, which uploads only what is missing."""
    return run_command(python_module("dvc", "push"), cwd=repo, extra_env={"AWS_MAX_ATTEMPTS": "1"})


@task(name="register-version", timeout_seconds=300)
def register_version(repo: Path, out_dir: Path) -> str:
    """Register the packaged version as a candidate (idempotent), then write its lineage tree
    (markdown) and page (HTML) into `out_dir`."""
    out = run_command(python_module("routerops.cli", "lineage", "register"), cwd=repo)
    out += run_command(python_module("routerops.cli", "lineage", "show", "--markdown", str(out_dir / "lineage.md"),
                                     "--html", str(out_dir / "lineage.html")), cwd=repo)
    return out


@task(name="service", timeout_seconds=900, task_run_name="service-{action}")
def service(action: str, repo: Path, ref: str | None = None) -> str:
    """`switch` the local stack's router service to a registry version, `commit` the switch (stop
    the old backend) or `revert` it; says so and does nothing when no service is running."""
    return run_command(python_module("infra.local.stack", "service", action, *([ref] if ref else [])), cwd=repo)


@task(name="emit-event", timeout_seconds=30, task_run_name="emit-{spec[event]}")
def emit(spec: dict[str, Any]) -> str:
    """Emit a Prefect event a stage described (`{"event", "resource", "payload"}`); returns its id."""
    from prefect.events import emit_event

    sent = emit_event(event=spec["event"], resource=spec["resource"], payload=spec.get("payload"))
    if sent is None:
        raise RuntimeError(f"Prefect did not emit {spec['event']}: events are off for this client")
    get_run_logger().info("emitted %s (%s)", spec["event"], spec["resource"]["prefect.resource.id"])
    return str(sent.id)


@task(name="read-metrics", timeout_seconds=30)
def read_metrics(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


@task(name="gate", timeout_seconds=30)
def gate(path: Path, key: str) -> None:
    """Fail unless the metrics file `path` holds a true `key`."""
    metrics = json.loads(path.read_text())
    if metrics.get(key) is not True:
        raise GateFailed(f"{path}: {key} is {metrics.get(key)!r}, not true: {json.dumps(metrics)}")


@task(name="run-stage", timeout_seconds=1800, task_run_name="stage-{module}")
def run_stage(module: str, repo: Path, args: tuple[str, ...] = ()) -> str:
    return run_command(python_module(f"stages.{module}", *args), cwd=repo)


@task(name="run-in-workspace", timeout_seconds=3600, task_run_name="{name}")
def run_in_workspace(name: str, module_args: list[str], workspace: Path) -> str:
    """`python -m <module_args>` in another workspace of this project (a challenger's worktree):
    its own code, params and outputs, this project's shared data."""
    from routerops.paths import shared_data_dir

    return run_command(python_module(*module_args), cwd=workspace,
                       extra_env={"ROUTEROPS_ROOT": str(workspace), "ROUTEROPS_SHARED_DATA": str(shared_data_dir())})


@task(name="publish-file", timeout_seconds=60, task_run_name="publish-{key}")
def publish_file(path: Path, key: str, description: str) -> str:
    """A stage's markdown file as a Prefect artifact and in the run's log; returns the text."""
    text = path.read_text()
    create_markdown_artifact(key=key, markdown=text, description=description)
    get_run_logger().info("%s (%s):\n%s", description, path, text)
    return text


@task(name="running-services", timeout_seconds=30)
def running_services(repo: Path) -> str | None:
    """What the run left running for later commands (the S3 store DVC pushes to), and how to
    stop it; None when nothing is left running."""
    from infra.local.s3 import running_summary

    return running_summary(repo / ".routerops" / "s3")
