"""The stack's router service: the champion's Bento behind a front door on a fixed port, and the
switch to a new version without a failed request.

One backend per version (`bentoml serve <bento>` on a free loopback port, pid file and log in
`.routerops/stack/`), the front door (`infra/local/front.py`) on params `serve.port`. A version's
package is materialised from the DVC cache (or the remote) by the md5 the registry holds for it
and imported into the stack's own BentoML home, so any registered version can be served, whatever
workspace built it. Every backend shares one API key store (`.routerops/stack/keys.sqlite`): a key
and its spent budget survive a switch.

The switch, in an order that can be undone at every step: `switch REF` starts the new backend and
waits until it is ready (a failure stops it: nothing changed), then tells the front door, which
sends every new request to it and answers once the old backend's requests in flight have finished;
the old backend keeps running. `commit` then stops the old backend; `revert` sends traffic back to
it and stops the new one. The retrain flow switches, promotes in the registry, and commits, or
reverts when the promotion fails.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from infra.local.front import VERSION_HEADER
from infra.local.procs import ManagedProcess, http_ok
from routerops.champion import LocalFirstObjects
from routerops.io import write_json_atomic
from routerops.lineage import ObjectSource
from routerops.packaging import RECORD_FILE, PackageRecord
from routerops.registry import Entry, Registry
from routerops.remote import DvcS3Remote, read_remote_config
from routerops.service_process import free_port, import_package
from routerops.serving import KEYS_DB_ENV

__all__ = ["VERSION_HEADER", "RouterService", "ServiceStateError"]

LOOPBACK = "127.0.0.1"


class ServiceStateError(RuntimeError):
    pass


@dataclass(frozen=True)
class RouterService:
    root: Path
    artifact: str  # the registry's artifact (params package_router.model_name)
    port: int  # the front door's
    state_dir: Path

    @property
    def home(self) -> Path:
        return self.state_dir / "bentoml"

    @property
    def keys_db(self) -> Path:
        return self.state_dir / "keys.sqlite"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "service.json"

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def state(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self.state_file.read_text()))
        except FileNotFoundError:
            return None

    # -- processes ------------------------------------------------------------------------------

    def front(self, upstream: str = "", version: str = "") -> ManagedProcess:
        import sys

        return ManagedProcess("front", self.state_dir,
                              [sys.executable, "-m", "infra.local.front", "--port", str(self.port), "--upstream",
                               upstream, "--version", version],
                              lambda: http_ok(f"{self.url}/-/upstream"), cwd=self.root, marker="infra.local.front")

    def backend(self, version: str, bento_tag: str = "", port: int = 0) -> ManagedProcess:
        import sys

        bentoml = str(Path(sys.executable).parent / "bentoml")
        scratch = self.state_dir / f"backend-{version}"
        scratch.mkdir(parents=True, exist_ok=True)
        return ManagedProcess(f"backend-{version}", self.state_dir,
                              [bentoml, "serve", bento_tag, "--host", LOOPBACK, "--port", str(port)],
                              lambda: http_ok(f"http://{LOOPBACK}:{port}/readyz"), cwd=scratch,
                              env={"BENTOML_HOME": str(self.home), "BENTOML_DO_NOT_TRACK": "true",
                                   KEYS_DB_ENV: str(self.keys_db)},
                              marker=f"serve {bento_tag}" if bento_tag else "bentoml")

    def _objects(self) -> LocalFirstObjects:
        def remote() -> ObjectSource:
            return DvcS3Remote(read_remote_config(self.root))

        return LocalFirstObjects(self.root, remote)

    def materialise(self, entry: Entry) -> Path:
        """The version's package folder (record and archives), from the cache or the remote."""
        target = self.state_dir / "packages" / entry.router_version
        if (target / RECORD_FILE).is_file():
            return target
        objects = self._objects()
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for item in json.loads(objects.get(entry.package.md5)):
            dest = tmp / item["relpath"]
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(objects.path(item["md5"], tmp / ".objects"), dest)
        shutil.rmtree(tmp / ".objects", ignore_errors=True)
        tmp.replace(target)
        return target

    def _start_backend(self, entry: Entry) -> dict[str, Any]:
        record, _ = import_package(self.materialise(entry), self.home)
        port = free_port()
        self.backend(entry.router_version, record.bento_tag, port).start(timeout_s=180)
        return {"version": entry.router_version, "semver": entry.semver, "bento_tag": record.bento_tag,
                "port": port, "upstream": f"http://{LOOPBACK}:{port}"}

    def _stop_backend(self, b: dict[str, Any]) -> str:
        return self.backend(b["version"], b["bento_tag"], b["port"]).stop(timeout_s=60)

    def _running(self, b: dict[str, Any]) -> bool:
        return self.backend(b["version"], b["bento_tag"], b["port"]).pid() is not None

    # -- commands -------------------------------------------------------------------------------

    def up(self) -> list[str]:
        """Serve the champion (idempotent); nothing when no champion is registered."""
        champion = Registry(self.root, self.artifact).champion()
        if champion is None:
            return ["service: no champion registered (`routerops lineage promote`); not started"]
        st = self.state()
        said = []
        current = st["current"] if st else None
        if current is None or not self._running(current):
            current = self._start_backend(champion)
            said.append(f"backend {champion.semver} ({champion.router_version}): started on port {current['port']}")
            write_json_atomic(self.state_file, {"current": current, "previous": None})
        else:
            said.append(f"backend {current['semver']} ({current['version']}): already running")
        said.append(self.front(current["upstream"], current["version"]).start(timeout_s=60))
        self._tell_front(current)  # a front restarted from an older command line points at the current one
        said.append(f"router service: {self.url}/v1 (model {self.artifact}), version {current['semver']}")
        return said

    def _tell_front(self, b: dict[str, Any]) -> dict[str, Any]:
        r = httpx.post(f"{self.url}/-/switch", json={"upstream": b["upstream"], "version": b["version"]},
                       timeout=httpx.Timeout(600.0, connect=5.0))
        r.raise_for_status()
        return dict(r.json())

    def switch(self, ref: str) -> list[str]:
        """Serve `ref` (a registry version); the old backend keeps running until `commit`."""
        st = self.state()
        if st is None or self.front().pid() is None:
            return ["service: not running; nothing to switch"]
        if st.get("previous"):
            raise ServiceStateError("a switch is pending: `commit` or `revert` it first")
        entry = Registry(self.root, self.artifact).resolve(ref)
        current = st["current"]
        if entry.router_version == current["version"]:
            return [f"service: already serving {entry.semver} ({entry.router_version})"]
        new = self._start_backend(entry)  # a failure here changes nothing
        try:
            drained = self._tell_front(new)
        except Exception:
            self._stop_backend(new)
            raise
        write_json_atomic(self.state_file, {"current": new, "previous": current})
        return [f"service: now serving {entry.semver} ({entry.router_version}) on port {new['port']}; "
                f"waited for {drained['waited_for']} request(s) in flight on {current['semver']}"]

    def commit(self) -> list[str]:
        st = self.state()
        if not st or not st.get("previous"):
            return ["service: no switch pending"]
        said = self._stop_backend(st["previous"])
        write_json_atomic(self.state_file, {"current": st["current"], "previous": None})
        return [said]

    def revert(self) -> list[str]:
        st = self.state()
        if not st or not st.get("previous"):
            return ["service: no switch pending"]
        old, new = st["previous"], st["current"]
        self._tell_front(old)
        write_json_atomic(self.state_file, {"current": old, "previous": None})
        return [f"service: back on {old['semver']} ({old['version']})", self._stop_backend(new)]

    def down(self) -> list[str]:
        said = [self.front().stop(timeout_s=30)]
        st = self.state() or {}
        for b in (st.get("current"), st.get("previous")):
            if b:
                said.append(self._stop_backend(b))
        self.state_file.unlink(missing_ok=True)
        return said

    def status(self) -> list[str]:
        st = self.state()
        if not st:
            return ["service: stopped"]
        c = st["current"]
        front = self.front().pid()
        return [f"service: front {'running (pid ' + str(front) + ')' if front else 'stopped'} at {self.url}; "
                f"serving {c['semver']} ({c['version']}) on port {c['port']}"
                + ("" if self._running(c) else " (backend not running)")
                + (f"; switch from {st['previous']['semver']} pending" if st.get("previous") else "")]

    def record(self) -> PackageRecord | None:
        st = self.state()
        if not st:
            return None
        pkg = self.state_dir / "packages" / st["current"]["version"] / RECORD_FILE
        return PackageRecord.model_validate_json(pkg.read_text())
