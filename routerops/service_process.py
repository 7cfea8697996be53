"""Running a packaged Bento as a local `bentoml serve` process: start, wait until ready, stop.

Used by `routerops serve`, the demo and the tests. It drives BentoML's command line (never its
Python API, which the core library does not import): `bentoml import` restores the model and the
Bento from the archives `package_router` exported, `bentoml serve TAG` serves the Bento from its
own directory in BentoML's store, not from the source tree.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx

from routerops.packaging import BENTO_ARCHIVE, MODEL_ARCHIVE, RECORD_FILE, PackageRecord

__all__ = ["ServiceError", "ServiceProcess", "free_port", "import_archives", "import_package"]

# Under 2 s on an idle 2-core machine from `bentoml serve` to a ready /readyz (the tiny router).
_POLL_S = 0.2
_LOG_TAIL = 40


class ServiceError(RuntimeError):
    """The service could not be started, imported or stopped; the message quotes its log."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _bentoml() -> str:
    return str(Path(sys.executable).parent / "bentoml")


def _env(home: Path, extra: Mapping[str, str] | None) -> dict[str, str]:
    return {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true", **(extra or {})}


def _in_store(group: list[str], tag: str, env: Mapping[str, str]) -> bool:
    proc = subprocess.run([_bentoml(), *group, "get", tag], env=dict(env), capture_output=True, text=True,
                          timeout=120)
    return proc.returncode == 0


def import_archives(model_tag: str, model_archive: Path, bento_tag: str, bento_archive: Path, home: Path) -> list[str]:
    """`bentoml import` whichever of the model and the Bento the store lacks; returns what it imported."""
    env = _env(home, None)
    done = []
    # `bentoml models get|import` for models, `bentoml get|import` for Bentos.
    for cli, tag, archive in ((["models"], model_tag, model_archive), ([], bento_tag, bento_archive)):
        if _in_store(cli, tag, env):
            continue
        if not archive.is_file():
            raise ServiceError(f"{tag} is not in {home} and {archive} does not exist: run `dvc pull` or "
                               "`dvc repro package_router`")
        proc = subprocess.run([_bentoml(), *cli, "import", str(archive)], env=env, capture_output=True, text=True,
                              timeout=600)
        if proc.returncode != 0:
            raise ServiceError(f"bentoml import {archive} failed: {proc.stderr.strip()[-2000:]}")
        done.append(tag)
    return done


def import_package(package_dir: Path, home: Path) -> tuple[PackageRecord, list[str]]:
    """The record `package_router` wrote in `package_dir`, and the tags `import_archives` brought
    into `home` from the archives beside it (none when the store has both)."""
    record = PackageRecord.model_validate_json((package_dir / RECORD_FILE).read_text())
    return record, import_archives(record.model_tag, package_dir / MODEL_ARCHIVE, record.bento_tag,
                                   package_dir / BENTO_ARCHIVE, home)


@dataclass
class ServiceProcess:
    """One `bentoml serve <bento>` on loopback, in its own process group."""

    bento: str
    home: Path
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    cwd: Path | None = None  # where the server starts; never needs to be the checkout
    env: Mapping[str, str] | None = None
    log_path: Path | None = None
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def command(self) -> list[str]:
        # No `--arg`: serving a built Bento, BentoML 1.4 replaces command-line arguments with the ones
        # recorded at build time (`_load_bento` calls `set_arguments(bento.info.args)`); settings
        # change through params and a new package.
        return [_bentoml(), "serve", self.bento, "--host", self.host, "--port", str(self.port)]

    def start(self, timeout_s: float = 120.0) -> ServiceProcess:
        log_path = self.log_path or Path(self.home) / "logs" / f"serve-{self.port}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        log = log_path.open("ab")
        self._proc = subprocess.Popen(self.command(), cwd=self.cwd or self.home, env=_env(self.home, self.env),
                                      stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServiceError(f"`{' '.join(self.command())}` exited {self._proc.returncode} before it was "
                                   f"ready:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/readyz", timeout=2.0).status_code == 200:
                    return self
            time.sleep(_POLL_S)
        self.kill()
        raise ServiceError(f"{self.base_url} was not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-_LOG_TAIL:])

    def terminate(self) -> None:
        """SIGTERM to the server's process group: BentoML lets in-flight requests finish."""
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGTERM)

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout=30)

    def wait(self, timeout_s: float) -> int:
        assert self._proc is not None
        return self._proc.wait(timeout=timeout_s)

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """Graceful stop, then SIGKILL after `timeout_s`; returns the exit code."""
        if self._proc is None:
            return None
        self.terminate()
        try:
            return self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return self._proc.returncode

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
