"""The local stack: the S3 store, a Prefect server, the process work pool with its deployments
(`prefect.yaml`), a worker, and the router service, all real processes on loopback.

`python -m infra.local.stack up|down|status` (`make up`, `make down`), and `service
switch|commit|revert|status` for the router service (`infra/local/service.py`). `up` is
idempotent: what runs and answers its health check is left as it is, what does not is started
and waited for; the deployments are applied every time (an update when they exist); the service
serves the registry's champion (none is started before one is promoted). `down` stops the worker
first (so no new flow run starts), then the router service, then the server, then the S3 store.
State, pid files and logs live in `.routerops/stack/` (the server's database in
`.routerops/stack/prefect/`), apart from the demo's ephemeral Prefect home, so `make demo` and
the stack never share a database.

Health checks: the server's `/api/health`; the worker's heartbeat (the server lists it ONLINE
in the pool); the service's `/readyz` (each backend) and `/-/upstream` (the front door); the
store's S3 listing (`infra.local.s3`). Ports: params `stack.prefect_port` and `serve.port`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from infra.local.dvc_remote import configure_remote
from infra.local.procs import ManagedProcess, ProcessError, http_ok
from infra.local.s3 import LocalS3, LocalS3Error
from infra.local.service import RouterService, ServiceStateError
from routerops.config import load_params
from routerops.lineage import LineageError
from routerops.paths import default_params_file, project_root
from routerops.registry import RegistryError
from routerops.service_process import ServiceError

__all__ = ["Stack", "StackError", "apply_deployments", "main"]

LOOPBACK = "127.0.0.1"
DEPLOYMENTS_FILE = "prefect.yaml"


class StackError(RuntimeError):
    pass


def _telemetry_off() -> dict[str, str]:
    return {"DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1",
            "BENTOML_DO_NOT_TRACK": "true", "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "GX_ANALYTICS_ENABLED": "false", "VLLM_NO_USAGE_STATS": "1"}


@contextmanager
def _api(url: str) -> Iterator[None]:
    """Prefect's client settings pointed at `url` for this block."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: url}):
        yield


def _doc(root: Path) -> dict[str, Any]:
    return dict(yaml.safe_load((root / DEPLOYMENTS_FILE).read_text(encoding="utf-8")) or {})


def _pull_steps(root: Path) -> list[dict[str, Any]]:
    """prefect.yaml's pull steps with `{{ $ROUTEROPS_ROOT }}` made this checkout (what `prefect
    deploy` would template from the environment)."""
    text = json.dumps(_doc(root).get("pull") or [])
    return list(json.loads(text.replace("{{ $ROUTEROPS_ROOT }}", str(root))))


def _deployment_specs(root: Path) -> list[dict[str, Any]]:
    specs = _doc(root).get("deployments") or []
    for d in specs:
        for key in ("name", "entrypoint", "work_pool"):
            if key not in d:
                raise StackError(f"{root / DEPLOYMENTS_FILE}: deployment {d.get('name', '?')!r} has no {key!r}")
    return list(specs)


def apply_deployments(root: Path, api_url: str) -> list[str]:
    """Create or update every deployment of `prefect.yaml` on the server at `api_url`, with its
    schedules, event triggers and concurrency limit, run from `root` by a process worker. The
    work pools they name are created (type process) when missing. Returns their names."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.deployments.runner import RunnerDeployment
    from prefect.events import DeploymentEventTrigger
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.flows import load_flow_from_entrypoint

    done = []
    pull = _pull_steps(root)
    with _api(api_url):
        specs = _deployment_specs(root)
        with get_client(sync_client=True) as client:
            for pool in sorted({d["work_pool"]["name"] for d in specs}):
                try:
                    client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
                except ObjectAlreadyExists:
                    pass
        for d in specs:
            flow: Any = load_flow_from_entrypoint(str(root / d["entrypoint"]))
            limit = d.get("concurrency_limit")
            dep = RunnerDeployment.from_flow(
                flow, name=d["name"],
                schedules=[CronSchedule(cron=s["cron"], timezone=s.get("timezone", "UTC"))
                           for s in d.get("schedules") or []],
                triggers=[DeploymentEventTrigger(**t) for t in d.get("triggers") or []],
                concurrency_limit=None if limit is None else ConcurrencyLimitConfig(**limit),
                parameters=d.get("parameters") or {})
            dep.entrypoint = d["entrypoint"]
            dep._path = str(root)
            deployment_id = dep.apply(work_pool_name=d["work_pool"]["name"])
            # The pull steps put the flow run in this checkout: without them prefect 3.8's process
            # worker copies the whole deployment path (venv and S3 data included) to a temp dir.
            r = httpx.patch(f"{api_url}/deployments/{deployment_id}", json={"pull_steps": pull}, timeout=30)
            r.raise_for_status()
            done.append(f"{flow.name}/{d['name']}")
    return done


def workers_online(api_url: str, pool: str) -> list[str]:
    """Names of the pool's workers the server lists ONLINE (limit and offset sent explicitly:
    prefect 3.8.8's client sends null, which its server refuses)."""
    try:
        r = httpx.post(f"{api_url}/work_pools/{pool}/workers/filter", timeout=5,
                       json={"workers": {"status": {"any_": ["ONLINE"]}}, "limit": 50, "offset": 0})
    except httpx.HTTPError:
        return []
    return [w["name"] for w in r.json()] if r.is_success else []


@dataclass(frozen=True)
class Stack:
    root: Path
    prefect_port: int
    service_port: int

    @classmethod
    def of_project(cls, root: Path | None = None) -> Stack:
        root = root or project_root()
        params = load_params(default_params_file(root))
        return cls(root, params.stack.prefect_port, params.serve.port)

    def service(self) -> RouterService:
        artifact = load_params(default_params_file(self.root)).package_router.model_name
        return RouterService(self.root, artifact, self.service_port, self.state_dir)

    @property
    def state_dir(self) -> Path:
        return self.root / ".routerops" / "stack"

    @property
    def api_url(self) -> str:
        return f"http://{LOOPBACK}:{self.prefect_port}/api"

    @property
    def pool(self) -> str:
        pools = {d["work_pool"]["name"] for d in _deployment_specs(self.root)}
        if len(pools) != 1:
            raise StackError(f"{DEPLOYMENTS_FILE}: the local stack runs one process work pool, found {sorted(pools)}")
        return str(pools.pop())

    def _env(self) -> dict[str, str]:
        return {**_telemetry_off(), "PREFECT_HOME": str(self.state_dir / "prefect"), "PREFECT_API_URL": self.api_url,
                "ROUTEROPS_ROOT": str(self.root), "PYTHONPATH": str(self.root),
                # Run flows with this venv's interpreter, never an auto-provisioned `uv run`.
                "PREFECT_RUNNER_AUTO_INSTALL_DEPENDENCIES": "false",
                "PREFECT_LOGGING_LEVEL": os.environ.get("PREFECT_LOGGING_LEVEL", "INFO")}

    def server(self) -> ManagedProcess:
        env = {**self._env(), "PREFECT_SERVER_API_HOST": LOOPBACK}
        env.pop("PREFECT_API_URL")
        return ManagedProcess("prefect-server", self.state_dir,
                              [sys.executable, "-m", "prefect", "server", "start", "--host", LOOPBACK, "--port",
                               str(self.prefect_port)],
                              lambda: http_ok(f"{self.api_url}/health"), env=env, cwd=self.root,
                              marker="prefect server start")

    def worker(self) -> ManagedProcess:
        name = f"routerops-{self.prefect_port}"
        return ManagedProcess("worker", self.state_dir,
                              [sys.executable, "-m", "prefect", "worker", "start", "--pool", self.pool, "--type",
                               "process", "--name", name],
                              lambda: name in workers_online(self.api_url, self.pool), env=self._env(),
                              cwd=self.root, marker="prefect worker start")

    def store(self) -> LocalS3:
        return LocalS3(data_dir=self.root / ".routerops" / "s3")

    def up(self, *, with_store: bool = True, with_service: bool = True) -> list[str]:
        said = []
        if with_store:
            store = self.store()
            r = store.start(timeout_s=90)
            said.append(f"s3: {'already running' if r.already_running else 'started'} (pid {r.pid}) at "
                        f"{r.endpoint_url}")
            configure_remote(self.root, endpoint_url=store.endpoint_url, access_key_id=store.access_key,
                             secret_access_key=store.secret_key)
        said.append(self.server().start(timeout_s=120))
        said += [f"deployment {d}" for d in apply_deployments(self.root, self.api_url)]
        said.append(self.worker().start(timeout_s=90))
        if with_service:
            said += self.service().up()
        said.append(f"Prefect API: {self.api_url} (UI at http://{LOOPBACK}:{self.prefect_port}); "
                    f"`export PREFECT_API_URL={self.api_url}` to use it from a shell")
        return said

    def down(self, *, with_store: bool = True) -> list[str]:
        said = [self.worker().stop(timeout_s=30), *self.service().down(), self.server().stop(timeout_s=30)]
        if with_store:
            r = self.store().stop(timeout_s=30)
            said.append(f"s3: {r.outcome.value}" + (f" (pid {r.pid})" if r.pid else ""))
        return said

    def status(self) -> list[str]:
        server, worker = self.server(), self.worker()
        out = []
        for p in (server, worker):
            pid = p.pid()
            out.append(f"{p.name}: {'running (pid ' + str(pid) + ')' if pid else 'stopped'}"
                       + (", healthy" if pid and p.healthy() else ", not answering" if pid else ""))
        out += self.service().status()
        st = self.store().status()
        out.append(f"s3: {st.state.value}" + (f" at {st.endpoint_url}" if st.endpoint_url else ""))
        return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m infra.local.stack", description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["up", "down", "status", "service"])
    ap.add_argument("action", nargs="?", choices=["switch", "commit", "revert", "status"],
                    help="with `service`: switch to a version (then commit or revert), or its status")
    ap.add_argument("ref", nargs="?", help="with `service switch`: a registry version (default: champion)")
    ap.add_argument("--no-store", action="store_true", help="leave the S3 store alone")
    ap.add_argument("--no-service", action="store_true", help="with `up`: do not start the router service")
    args = ap.parse_args(argv)
    stack = Stack.of_project()
    try:
        if args.command == "service":
            svc = stack.service()
            lines = {"switch": lambda: svc.switch(args.ref or "champion"), "commit": svc.commit,
                     "revert": svc.revert, "status": svc.status}[args.action or "status"]()
        elif args.command == "up":
            lines = stack.up(with_store=not args.no_store, with_service=not args.no_service)
        elif args.command == "down":
            lines = stack.down(with_store=not args.no_store)
        else:
            lines = stack.status()
    except (StackError, ProcessError, LocalS3Error, ServiceStateError, ServiceError, RegistryError, LineageError,
            httpx.HTTPError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
