"""Fixtures for the local object store: one SeaweedFS per session on free loopback ports (so a
developer's demo store on the default ports is never touched), and throwaway git + DVC repos.

DVC and git run as subprocesses, exactly as a developer runs them, with telemetry off, their
global and system configuration isolated in the test's temp dir, and every AWS_* variable of the
developer's shell removed so real credentials or endpoints can never leak into a test.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from infra.local.dvc_remote import configure_remote
from infra.local.s3 import LocalS3, Ports, ServerState, StopOutcome

DVC = [sys.executable, "-m", "dvc"]
# A first start allocates volumes and elects the master: about 3 s here; 90 s absorbs a loaded CI.
START_TIMEOUT_S = 90.0


def isolated_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    config = home / "config"
    config.mkdir(parents=True, exist_ok=True)
    env.update({
        "DO_NOT_TRACK": "1", "DVC_NO_ANALYTICS": "1",
        "DVC_GLOBAL_CONFIG_DIR": str(config / "dvc-global"), "DVC_SYSTEM_CONFIG_DIR": str(config / "dvc-system"),
        # DVC keeps per-repo state and indexes here (default /var/tmp/dvc); keep tests self-contained.
        "DVC_SITE_CACHE_DIR": str(home / "dvc-site-cache"),
        "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "routerops-tests", "GIT_AUTHOR_EMAIL": "tests@routerops.invalid",
        "GIT_COMMITTER_NAME": "routerops-tests", "GIT_COMMITTER_EMAIL": "tests@routerops.invalid",
    })
    env.update(extra)
    return env


@dataclass
class DvcRepo:
    """A git + DVC working copy driven through the real `git` and `dvc` command lines."""

    root: Path
    env: dict[str, str]

    def run(self, *args: str, timeout_s: float = 120.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run([*DVC, *args], timeout_s, check)

    def git(self, *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
        return self._run(["git", *args], timeout_s, True)

    def _run(self, cmd: list[str], timeout_s: float, check: bool) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(cmd, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout_s)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\nstdout:\n{proc.stdout}\n"
                                 f"stderr:\n{proc.stderr}")
        return proc

    def use_store(self, store: LocalS3) -> None:
        configure_remote(self.root, endpoint_url=store.endpoint_url, access_key_id=store.access_key,
                         secret_access_key=store.secret_key)

    def write_files(self, rel: str, count: int, size: int, seed: int) -> None:
        """`count` files of `size` pseudo-random bytes (incompressible, reproducible), spread over
        a few sub-folders so DVC's directory object has some structure."""
        rng = random.Random(seed)
        for i in range(count):
            path = self.root / rel / f"part-{i % 4}" / f"shard-{i:05d}.bin"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(rng.randbytes(size))

    def commit_all(self, message: str) -> None:
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)

    def md5s(self, rel: str) -> dict[str, str]:
        """md5 of every file under `rel`, by relative path: what a round trip must reproduce."""
        folder = self.root / rel
        return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file()}

    def clone(self, dest: Path) -> DvcRepo:
        subprocess.run(["git", "clone", "-q", str(self.root), str(dest)], env=self.env, check=True,
                       capture_output=True, timeout=60)
        return DvcRepo(dest, self.env)


@pytest.fixture
def make_repo(tmp_path: Path) -> Callable[..., DvcRepo]:
    def make(name: str = "repo", **env: str) -> DvcRepo:
        root = tmp_path / name
        root.mkdir()
        repo = DvcRepo(root, isolated_env(tmp_path / "home", **env))
        repo.git("init", "-q")
        repo.run("init", "-q")
        repo.commit_all("dvc init")
        return repo

    return make


@pytest.fixture
def own_s3(tmp_path: Path) -> Iterator[Callable[[], LocalS3]]:
    """Factory of stores a single test owns (to kill, restart or stop), each on its own free ports.

    Teardown uses SIGKILL: safe for throwaway data, and it saves the ~16 s a graceful SeaweedFS
    stop takes; stop() then clears the pid file and leftover sockets.
    """
    stores: list[LocalS3] = []

    def make() -> LocalS3:
        store = LocalS3(data_dir=tmp_path / f"own-s3-{len(stores)}", ports=Ports.free())
        stores.append(store)
        return store

    yield make
    for store in stores:
        if store.status().state is ServerState.RUNNING:
            store.kill()
        store.stop(timeout_s=5.0)


@pytest.fixture
def auto_s3(tmp_path: Path) -> Iterator[Callable[..., LocalS3]]:
    """Factory of stores that choose their own ports (no `ports=`, as `make demo` runs them), each
    in its own data dir unless given one. Teardown stops whatever runs in every data dir handed
    out, however it was started (API, CLI, make), SIGKILL first as in `own_s3`."""
    data_dirs: list[Path] = []

    def make(data_dir: Path | None = None, **kwargs: object) -> LocalS3:
        store = LocalS3(data_dir=data_dir or tmp_path / f"auto-s3-{len(data_dirs)}", **kwargs)  # type: ignore[arg-type]
        if store.data_dir not in data_dirs:
            data_dirs.append(store.data_dir)
        return store

    try:
        yield make
    finally:
        errors: list[BaseException] = []
        for data_dir in data_dirs:
            # Explicit ports: no port planning; kill() and stop() act on the pid and state files.
            store = LocalS3(data_dir=data_dir, ports=Ports.free())
            try:
                if store.status().state is ServerState.RUNNING:
                    store.kill()
                store.stop(timeout_s=5.0)
            except Exception as exc:  # stop the others first, then report
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture(scope="session")
def local_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3]:
    """One store for the session's read-mostly tests. Its teardown is the suite's check that a
    graceful stop (SIGTERM alone, about 16 s) works after real use."""
    store = LocalS3(data_dir=tmp_path_factory.mktemp("local-s3"), ports=Ports.free())
    store.start(timeout_s=START_TIMEOUT_S)
    try:
        yield store
    finally:
        if store.stop(timeout_s=40.0).outcome is StopOutcome.KILLED:
            # Graceful stop is part of the contract; a kill here means SeaweedFS changed.
            pytest.fail("the session store needed SIGKILL to stop")
