"""The local stack's Prefect half on free loopback ports: a real server, the deployments of
prefect.yaml with their schedule, trigger and concurrency limit, a process worker that runs them,
and up/down that are idempotent and recover a killed worker."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from infra.local.procs import ManagedProcess, ProcessError
from infra.local.stack import Stack, workers_online
from routerops.service_process import free_port


@pytest.fixture(scope="module")
def stack(repo_root: Path, tmp_path_factory: pytest.TempPathFactory):
    clone = tmp_path_factory.mktemp("stack") / "project"
    subprocess.run(["git", "clone", "-q", str(repo_root), str(clone)], check=True, timeout=120)
    tags = subprocess.run(["git", "tag", "--list", "routerops-router*"], cwd=clone, capture_output=True, text=True,
                          check=True).stdout.split()
    if tags:  # a registry of its own, with no champion to serve
        subprocess.run(["git", "tag", "-d", *tags], cwd=clone, capture_output=True, check=True)
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["stack"]["prefect_port"], params["serve"]["port"] = free_port(), free_port()
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    s = Stack.of_project(clone)
    yield s
    s.down(with_store=False)


def _post(stack: Stack, path: str, body: dict) -> list[dict]:
    r = httpx.post(f"{stack.api_url}{path}", json={"limit": 50, "offset": 0, **body}, timeout=30)
    r.raise_for_status()
    return list(r.json())


def test_up_serves_the_deployments_and_a_worker(stack: Stack) -> None:
    said = stack.up(with_store=False)
    assert said[0].startswith("prefect-server: started (pid ") and said[-3].startswith("worker: started (pid ")
    assert said[-2] == "service: no champion registered (`routerops lineage promote`); not started"
    deps = {d["name"]: d for d in _post(stack, "/deployments/filter", {})}
    assert sorted(deps) == ["pipeline", "price-watch", "retrain"]
    assert all(d["path"] == str(stack.root) and d["work_pool_name"] == "routerops-local" for d in deps.values())
    assert [s["schedule"]["cron"] for s in deps["price-watch"]["schedules"]] == ["0 6 * * *"]
    assert deps["retrain"]["global_concurrency_limit"]["limit"] == 1
    assert deps["retrain"]["concurrency_options"]["collision_strategy"] == "ENQUEUE"
    autos = _post(stack, "/automations/filter", {})
    [auto] = [a for a in autos if a["actions"][0].get("deployment_id") == deps["retrain"]["id"]]
    assert auto["trigger"]["expect"] == ["routerops.prices.changed"]
    assert auto["actions"][0]["parameters"] == {"pricing_id": "{{ event.payload.new_pricing_id }}"}
    assert workers_online(stack.api_url, "routerops-local") == [f"routerops-{stack.prefect_port}"]


def test_up_again_changes_nothing(stack: Stack) -> None:
    pids = (stack.server().pid(), stack.worker().pid())
    said = stack.up(with_store=False)
    assert said[0] == f"prefect-server: already running (pid {pids[0]})"
    assert said[-3] == f"worker: already running (pid {pids[1]})"
    assert len(_post(stack, "/deployments/filter", {})) == 3  # applied again: updated, not duplicated


def test_a_killed_worker_is_seen_and_restarted(stack: Stack) -> None:
    pid = stack.worker().pid()
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while stack.worker().pid() is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert stack.status()[1:3] == ["worker: stopped", "service: stopped"]
    said = stack.up(with_store=False)
    assert said[-3].startswith("worker: started (pid ")


def test_down_stops_both_and_is_idempotent(stack: Stack) -> None:
    said = stack.down(with_store=False)
    assert said[0].startswith("worker: stopped (pid ") and said[1] == "front: not running"
    assert said[2].startswith("prefect-server: stopped (pid ")
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{stack.api_url}/health", timeout=5)
    assert stack.down(with_store=False) == ["worker: not running", "front: not running",
                                            "prefect-server: not running"]


def test_a_process_that_never_gets_healthy_is_killed_with_its_log(tmp_path: Path) -> None:
    def booted_but_never_healthy() -> bool:
        # Not healthy, ever; but first wait (at most 60 s) until the child has written its line,
        # so that how slowly a loaded machine starts Python cannot empty the log the error quotes.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (p.log_file.is_file() and "booting" in p.log_file.read_text()):
            time.sleep(0.05)
        return False

    p = ManagedProcess("sleeper", tmp_path,
                       ["python3", "-c", "print('booting', flush=True); import time; time.sleep(60)"],
                       booted_but_never_healthy)
    with pytest.raises(ProcessError, match=r"^sleeper: not healthy within 2 s \(exit -9\)\. Log .*sleeper\.log:\n"
                                           r"booting$"):
        p.start(timeout_s=2)
    assert p.pid() is None and not p.pid_file.exists()


def test_a_process_that_exits_at_start_fails_fast(tmp_path: Path) -> None:
    p = ManagedProcess("quitter", tmp_path, ["python3", "-c", "import sys; print('bad flag'); sys.exit(3)"],
                       lambda: False)
    with pytest.raises(ProcessError, match=r"^quitter: not healthy within 60 s \(exit 3\)\. Log .*\n"
                                           r"bad flag$"):
        p.start(timeout_s=60)
