"""Ports per data directory: stores given no ports (every checkout's `make demo`) never collide,
keep their endpoint across restarts, and are found by every command without being told the ports.

The default ports may already be held on this machine (another checkout's demo store): every
test here passes whether they are or not, and none of them stops anything it did not start.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest

import infra.local.s3 as s3_module
from infra.local.s3 import (
    LocalS3,
    PortInUseError,
    Ports,
    ServerState,
    StopOutcome,
    default_data_dir,
    running_summary,
)

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 90.0
LOOPBACK = "127.0.0.1"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "ROUTEROPS_ROOT"}
    env.update(extra)
    return env


def _cli(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT,
         timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "infra.local.s3", *args], cwd=cwd, env=env or _env(),
                          capture_output=True, text=True, timeout=timeout_s)


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _values(ports: Ports) -> set[int]:
    return {port for _, port in ports.items()}


@contextlib.contextmanager
def _hold(*ports: int) -> Iterator[None]:
    """Listen on each of `ports` that is free, as another program would; ports someone else
    already listens on are left to them (they are taken either way)."""
    held: list[socket.socket] = []
    try:
        for port in ports:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((LOOPBACK, port))
            except OSError as exc:
                s.close()
                if exc.errno != errno.EADDRINUSE:
                    raise
                continue
            s.listen()
            held.append(s)
        yield
    finally:
        for s in held:
            s.close()


def _recorded(store: LocalS3) -> Ports:
    return Ports(**json.loads(store.ports_file.read_text())["ports"])


def _port_in_use_message(port: int, role: str = "S3") -> str:
    """Today's PortInUseError text for a port this test process listens on."""
    pid = os.getpid()
    cmd = " ".join(part.decode() for part in Path("/proc/self/cmdline").read_bytes().split(b"\0") if part)[:160]
    return (f"{role} port 127.0.0.1:{port} is already in use by pid {pid} ({cmd}). To fix: stop it "
            f"(`kill {pid}`, then `kill -9 {pid}` if it lingers) or choose another port; every port is "
            f"configurable (`python -m infra.local.s3 start --help`, or LocalS3(ports=Ports(...))).")


# ------------------------------------------------------------------ no server needed


def test_default_data_dir_follows_the_project_root_when_called(tmp_path: Path, monkeypatch) -> None:
    assert not hasattr(s3_module, "REPO_ROOT") and not hasattr(s3_module, "DEFAULT_DATA_DIR")
    monkeypatch.setenv("ROUTEROPS_ROOT", str(tmp_path / "elsewhere"))
    assert default_data_dir() == (tmp_path / "elsewhere").resolve() / ".routerops" / "s3"
    assert LocalS3().data_dir == default_data_dir()

    # A scratch clone run from its own directory uses its own store, CLI included.
    clone = tmp_path / "clone"
    clone.mkdir()
    (clone / "params.yaml").write_text("{}\n")
    (clone / "pool.yaml").write_text("{}\n")
    monkeypatch.delenv("ROUTEROPS_ROOT")
    monkeypatch.chdir(clone)
    assert default_data_dir() == clone.resolve() / ".routerops" / "s3"
    status = _cli("status", "--json", cwd=clone, env=_env(PYTHONPATH=str(ROOT)))
    assert status.returncode == 3, status.stderr
    assert json.loads(status.stdout)["data_dir"] == str(clone.resolve() / ".routerops" / "s3")
    assert not (clone / ".routerops").exists(), "status must not create the store"


def test_status_is_read_only_and_env_records_the_ports_start_will_use(tmp_path: Path) -> None:
    data_dir = tmp_path / "s3"
    status = _cli("status", "--json", "--data-dir", str(data_dir))
    assert status.returncode == 3, status.stderr
    assert json.loads(status.stdout)["state"] == "stopped"
    assert not data_dir.exists()

    env = _cli("env", "--data-dir", str(data_dir))
    assert env.returncode == 0, env.stderr
    endpoint = re.search(r"^export AWS_ENDPOINT_URL_S3=(\S+)$", env.stdout, re.M)
    assert endpoint is not None, env.stdout
    recorded = json.loads((data_dir / "ports.json").read_text())
    assert recorded["endpoint_url"] == endpoint[1] == f"http://127.0.0.1:{recorded['ports']['s3']}"

    # From now on every command of this data dir names that endpoint.
    assert f"export AWS_ENDPOINT_URL_S3={endpoint[1]}" in _cli("env", "--data-dir", str(data_dir)).stdout
    again = _cli("status", "--json", "--data-dir", str(data_dir))
    assert json.loads(again.stdout)["endpoint_url"] == endpoint[1]
    assert f"start serves {endpoint[1]} (ports recorded in {data_dir / 'ports.json'})" in json.loads(again.stdout)["detail"]
    assert LocalS3(data_dir=data_dir).endpoint_url == endpoint[1]


def test_store_without_ports_avoids_taken_default_ports(tmp_path: Path) -> None:
    # Either another checkout's store holds the defaults already, or this test does.
    with _hold(*_values(Ports())):
        store = LocalS3(data_dir=tmp_path / "s3")
        assert _values(store.ports).isdisjoint(_values(Ports()))
        assert "no ports recorded yet and the default ports are taken: start chooses free ones" in store.status().detail
        assert store.assign_ports() == store.ports == _recorded(store)
    assert not store.pid_file.exists()


def test_recorded_ports_taken_by_another_program_are_replaced(tmp_path: Path) -> None:
    recorded, preferred = Ports.free_sets(2)
    data_dir = tmp_path / "s3"
    data_dir.mkdir()
    (data_dir / "ports.json").write_text(json.dumps({"ports": asdict(recorded)}))

    assert LocalS3(data_dir=data_dir, preferred_ports=preferred).ports == recorded
    with _hold(recorded.master):
        store = LocalS3(data_dir=data_dir, preferred_ports=preferred)
        assert store.ports == preferred
        assert (f"the ports recorded in {store.ports_file} are taken: start chooses others"
                in store.status().detail)
        assert store.assign_ports() == preferred == _recorded(store)
    # Recorded again: reused even though the old ones are free now.
    assert LocalS3(data_dir=data_dir, preferred_ports=recorded).ports == preferred


def test_recorded_ports_held_by_our_own_server_are_never_replaced(tmp_path: Path) -> None:
    """A server of this data dir whose pid file was lost still holds its ports: start must say
    so (today's PortInUseError) instead of starting a second server on the same store."""
    ports = Ports.free()
    data_dir = (tmp_path / "s3").resolve()
    data_dir.mkdir()
    (data_dir / "ports.json").write_text(json.dumps({"ports": asdict(ports)}))
    # A stand-in whose command line reads `.../weed server -dir=<store> PORT`, listening on the S3
    # port: Python (linked as `weed`) running the script `server`.
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "weed").symlink_to(sys.executable)
    (fake_bin / "server").write_text(
        "import socket, sys, time\n"
        "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "s.bind(('127.0.0.1', int(sys.argv[2]))); s.listen(); print('ready', flush=True); time.sleep(120)\n"
    )
    fake = subprocess.Popen([str(fake_bin / "weed"), "server", f"-dir={data_dir / 'store'}", str(ports.s3)],
                            cwd=fake_bin, stdout=subprocess.PIPE, text=True)
    try:
        assert fake.stdout is not None and fake.stdout.readline().strip() == "ready"
        store = LocalS3(data_dir=data_dir)
        assert store.ports == ports
        with pytest.raises(PortInUseError) as err:
            store.start(timeout_s=10)
        assert err.value.owner_pid == fake.pid and err.value.port == ports.s3
        assert "a SeaweedFS server for this data directory whose pid file was lost" in str(err.value)
        assert not store.pid_file.exists() and _recorded(store) == ports
    finally:
        fake.kill()
        fake.wait(timeout=10)


def test_explicit_busy_port_is_still_port_in_use_even_with_other_ports_recorded(tmp_path: Path) -> None:
    recorded, explicit = Ports.free_sets(2)
    data_dir = tmp_path / "s3"
    data_dir.mkdir()
    (data_dir / "ports.json").write_text(json.dumps({"ports": asdict(recorded)}))
    with _hold(explicit.s3):
        with pytest.raises(PortInUseError) as err:
            LocalS3(data_dir=data_dir, ports=explicit).start(timeout_s=10)
        assert str(err.value) == _port_in_use_message(explicit.s3)
        # The CLI: one --*-port option makes the ports explicit, exactly as before.
        cli = _cli("start", "--data-dir", str(data_dir), "--s3-port", str(explicit.s3), "--timeout", "10")
    assert cli.returncode == 1, cli.stdout
    assert f"error: {_port_in_use_message(explicit.s3)}" in cli.stderr.splitlines(), cli.stderr
    assert _recorded(LocalS3(data_dir=data_dir, ports=explicit)) == recorded
    assert not (data_dir / "weed.pid").exists()


# ------------------------------------------------------------------ real servers


def test_running_summary_of_a_running_and_a_stopped_store(local_s3: LocalS3, tmp_path: Path) -> None:
    pid = local_s3.status().pid
    expected = (f"local S3 store (SeaweedFS) still running: pid {pid}, {local_s3.endpoint_url}, "
                f"data in {local_s3.data_dir}\n"
                f"stop it with: python -m infra.local.s3 stop --data-dir {local_s3.data_dir}")
    assert running_summary(local_s3.data_dir) == expected
    described = _cli("describe", "--data-dir", str(local_s3.data_dir))
    assert (described.returncode, described.stdout) == (0, expected + "\n"), described.stderr

    never = tmp_path / "never-started"
    assert running_summary(never) is None
    described = _cli("describe", "--data-dir", str(never))
    assert (described.returncode, described.stdout) == (3, ""), described.stderr
    assert not never.exists()

    # A stale pid file is not a running store either.
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "weed.pid").write_text(f"{gone.pid}\n")
    assert running_summary(stale) is None


@pytest.mark.slow
@pytest.mark.parametrize("preferred", ["defaults", "own"])
def test_two_data_dirs_without_ports_both_run_on_their_own_ports(auto_s3, preferred: str) -> None:
    """Two checkouts on one machine. `defaults`: the real default ports, taken by the first store
    if they are free, else already by another checkout's; `own`: free ports this test makes the
    preferred ones, so the first store surely holds them."""
    kwargs = {} if preferred == "defaults" else {"preferred_ports": Ports.free()}
    first: LocalS3 = auto_s3(**kwargs)
    wanted = first.preferred_ports
    wanted_free = all(_free(port) for port in _values(wanted))
    first.start(timeout_s=START_TIMEOUT_S)
    if wanted_free:
        assert first.ports == wanted
    else:
        assert first.ports != wanted

    second: LocalS3 = auto_s3(**kwargs)
    assert second.ports != wanted and _values(second.ports).isdisjoint(_values(first.ports))
    started = second.start(timeout_s=START_TIMEOUT_S)
    assert not started.already_running and started.endpoint_url == second.endpoint_url != first.endpoint_url
    for store in (first, second):
        assert _recorded(store) == store.ports

    for store in (first, second):
        s3 = store.client()
        s3.put_object(Bucket=store.bucket, Key="whose.txt", Body=str(store.data_dir).encode())
    for store in (first, second):
        body = store.client().get_object(Bucket=store.bucket, Key="whose.txt")["Body"].read()
        assert body == str(store.data_dir).encode()

    # Each stops on its own: no grace period (SIGKILL at once; graceful stops are checked elsewhere).
    assert first.stop(timeout_s=0).outcome is StopOutcome.KILLED
    assert first.status().state is ServerState.STOPPED
    assert second.status().state is ServerState.RUNNING
    body = second.client().get_object(Bucket=second.bucket, Key="whose.txt")["Body"].read()
    assert body == str(second.data_dir).encode()
    assert second.stop(timeout_s=0).outcome is StopOutcome.KILLED
    assert second.status().state is ServerState.STOPPED


@pytest.mark.slow
def test_restart_keeps_the_recorded_ports_and_make_stop_finds_them(auto_s3, tmp_path: Path, monkeypatch) -> None:
    # A checkout of its own: its default data dir is where `make stop` and the summary look.
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "Makefile").write_text("# stands in for the project's Makefile (it only has to exist)\n")
    monkeypatch.setenv("ROUTEROPS_ROOT", str(checkout))
    data_dir = checkout.resolve() / ".routerops" / "s3"
    assert default_data_dir() == data_dir
    env = _env(ROUTEROPS_ROOT=str(checkout))

    preferred = Ports.free()
    store: LocalS3 = auto_s3(data_dir, preferred_ports=preferred)
    with _hold(*_values(preferred)):  # taken at the first start: the store gets other ports
        first = store.start(timeout_s=START_TIMEOUT_S)
    chosen = store.ports
    assert _values(chosen).isdisjoint(_values(preferred)) and _recorded(store) == chosen
    endpoint = f"http://127.0.0.1:{chosen.s3}"
    assert first.endpoint_url == endpoint

    summary = (f"local S3 store (SeaweedFS) still running: pid {first.pid}, {endpoint}, data in {data_dir}\n"
               "stop it with: make stop")
    assert running_summary() == summary
    described = _cli("describe", env=env)
    assert (described.returncode, described.stdout) == (0, summary + "\n"), described.stderr
    assert store.stop(timeout_s=0).outcome is StopOutcome.KILLED
    assert running_summary() is None

    # Stopped, the preferred ports free again: every command still names the recorded endpoint.
    assert LocalS3(data_dir=data_dir, preferred_ports=preferred).ports == chosen
    status = _cli("status", "--json", env=env)
    assert status.returncode == 3 and json.loads(status.stdout)["endpoint_url"] == endpoint, status.stderr
    assert f"export AWS_ENDPOINT_URL_S3={endpoint}\n" in _cli("env", env=env).stdout

    # Restarted by the CLI, told no ports: the same endpoint, so a configured DVC remote stays valid.
    started = _cli("start", "--timeout", str(START_TIMEOUT_S), env=env, timeout_s=START_TIMEOUT_S + 30)
    assert started.returncode == 0, started.stderr
    assert re.search(rf"^local S3 started in [0-9.]+ s: pid (\d+), {re.escape(endpoint)}, bucket routerops$",
                     started.stdout, re.M), started.stdout
    pid = LocalS3(data_dir=data_dir).status().pid
    assert running_summary() == summary.replace(f"pid {first.pid},", f"pid {pid},")

    # `make stop` in the project stops this checkout's store, found through its state file.
    stopped = subprocess.run(["make", "-s", "-C", str(ROOT), "stop"], env=env, capture_output=True, text=True,
                             timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    assert re.search(rf"^local S3: (terminated|killed) \(pid {pid}, ", stopped.stdout, re.M), stopped.stdout
    assert LocalS3(data_dir=data_dir).status().state is ServerState.STOPPED
    assert running_summary() is None


@pytest.mark.slow
def test_configure_before_the_first_start_writes_the_endpoint_start_uses(auto_s3, make_repo, tmp_path: Path) -> None:
    repo = make_repo()
    data_dir = tmp_path / "never-started"
    auto_s3(data_dir)  # registered for teardown; not started
    configure = [sys.executable, "-m", "infra.local.dvc_remote", "configure", "--repo", str(repo.root),
                 "--data-dir", str(data_dir)]
    proc = subprocess.run(configure, cwd=ROOT, env=repo.env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    local = (repo.root / ".dvc" / "config.local").read_text()
    found = re.search(r"endpointurl = (http://127\.0\.0\.1:\d+)", local)
    assert found is not None, local
    endpoint = found[1]
    assert (f"note: the local store is stopped; using the endpoint its next start will serve, {endpoint} "
            f"(ports recorded in {data_dir / 'ports.json'})") in proc.stderr
    # Configuring again (e.g. the next `make demo`) keeps it.
    again = subprocess.run(configure, cwd=ROOT, env=repo.env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert (repo.root / ".dvc" / "config.local").read_text() == local

    store: LocalS3 = auto_s3(data_dir)
    assert store.start(timeout_s=START_TIMEOUT_S).endpoint_url == endpoint
    # DVC, configured before the store existed, reaches it.
    (repo.root / "hello.txt").write_text("hello\n")
    repo.run("add", "hello.txt")
    assert "1 file pushed" in repo.run("push").stdout
    assert store.stop(timeout_s=0).outcome is StopOutcome.KILLED
