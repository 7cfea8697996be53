"""A long-running local process the stack owns: started detached with a pid file and a log,
found again by later commands, health-checked, stopped by process group.

Idempotent both ways: `start` on a healthy running process changes nothing, `stop` on a stopped
one says so. A pid file whose process is gone, or whose pid now belongs to another program (pids
are reused), counts as stopped. Loopback only: health checks go to 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ManagedProcess", "ProcessError", "http_ok"]


class ProcessError(RuntimeError):
    pass


def http_ok(url: str, timeout_s: float = 2.0) -> bool:
    """True when `url` answers 2xx."""
    import httpx

    try:
        return httpx.get(url, timeout=timeout_s).is_success
    except httpx.HTTPError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by its parent) is not running
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@dataclass(frozen=True)
class ManagedProcess:
    name: str
    state_dir: Path
    argv: Sequence[str]
    healthy: Callable[[], bool]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    marker: str = ""  # a string its command line contains (tells our process from a reused pid)

    @property
    def pid_file(self) -> Path:
        return self.state_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / f"{self.name}.log"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        if not _alive(pid) or (self.marker and self.marker not in _cmdline(pid)):
            return None
        return pid

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def start(self, timeout_s: float = 120.0) -> str:
        """Start unless running and healthy; wait until healthy. Returns what it did."""
        pid = self.pid()
        if pid is not None:
            if self._wait_healthy(pid, min(timeout_s, 30.0)):
                return f"{self.name}: already running (pid {pid})"
            raise ProcessError(f"{self.name}: pid {pid} is running but not healthy; `down` it first. Log "
                               f"{self.log_file}:\n{self.log_tail()}")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            proc = subprocess.Popen(list(self.argv), cwd=self.cwd, env={**os.environ, **self.env}, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        tmp = self.pid_file.with_suffix(".pid.tmp")
        tmp.write_text(str(proc.pid))
        tmp.replace(self.pid_file)
        if not self._wait_healthy(proc.pid, timeout_s, proc):
            self._signal_group(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            self.pid_file.unlink(missing_ok=True)
            raise ProcessError(f"{self.name}: not healthy within {timeout_s:.0f} s (exit {proc.poll()}). Log "
                               f"{self.log_file}:\n{self.log_tail()}")
        return f"{self.name}: started (pid {proc.pid})"

    def _wait_healthy(self, pid: int, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> bool:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if (proc.poll() is not None) if proc is not None else not _alive(pid):
                return False
            if self.healthy():
                return True
            time.sleep(0.5)
        return False

    @staticmethod
    def _signal_group(pid: int, sig: signal.Signals) -> None:
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, timeout_s: float = 30.0) -> str:
        """SIGTERM to its process group, SIGKILL after `timeout_s`."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return f"{self.name}: not running"
        self._signal_group(pid, signal.SIGTERM)
        end = time.monotonic() + timeout_s
        while _alive(pid) and time.monotonic() < end:
            time.sleep(0.2)
        how = "stopped"
        if _alive(pid):
            self._signal_group(pid, signal.SIGKILL)
            how = f"killed after {timeout_s:.0f} s"
        self.pid_file.unlink(missing_ok=True)
        return f"{self.name}: {how} (pid {pid})"
