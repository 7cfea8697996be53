from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra.local.dvc_remote import REMOTE_URL, DvcRemoteError, configure_remote
from infra.local.s3 import LocalS3

ROOT = Path(__file__).resolve().parents[2]
DVC = [sys.executable, "-m", "dvc"]


def _object_count(store: LocalS3, prefix: str) -> int:
    """Objects under `prefix`, paging through listings of 1,000."""
    s3 = store.client(max_attempts=1, read_timeout_s=10)
    count, token = 0, None
    while True:
        kwargs = {"Bucket": store.bucket, "Prefix": prefix, **({"ContinuationToken": token} if token else {})}
        page = s3.list_objects_v2(**kwargs)
        count += page.get("KeyCount", 0)
        if not page.get("IsTruncated"):
            return count
        token = page["NextContinuationToken"]


def test_configure_keeps_endpoint_and_keys_out_of_the_committed_config(make_repo) -> None:
    repo = make_repo()
    # A committed config that already (wrongly) carries a secret: it must be moved out.
    (repo.root / ".dvc" / "config").write_text(
        "[core]\n    remote = old\n['remote \"storage\"']\n    url = s3://elsewhere/x\n    secret_access_key = leaked\n"
    )
    done = configure_remote(repo.root, endpoint_url="http://127.0.0.1:18333")
    assert done.removed_from_committed == ("secret_access_key",)

    committed = (repo.root / ".dvc" / "config").read_text()
    local = (repo.root / ".dvc" / "config.local").read_text()
    assert "remote = storage" in committed and f"url = {REMOTE_URL}" in committed
    for private in ("endpointurl", "access_key_id", "secret_access_key", "leaked", "127.0.0.1"):
        assert private not in committed
    assert "endpointurl = http://127.0.0.1:18333" in local and "secret_access_key = routerops-local-secret" in local
    # DVC's own .dvc/.gitignore keeps the local file out of git.
    assert ".dvc/config.local" not in repo.git("status", "--porcelain", "--ignored=no").stdout

    # Idempotent, and --aws style (no endpoint, no keys) clears the local settings again.
    configure_remote(repo.root, endpoint_url="http://127.0.0.1:18333")
    assert (repo.root / ".dvc" / "config").read_text() == committed
    configure_remote(repo.root, endpoint_url=None, access_key_id=None, secret_access_key=None)
    assert "endpointurl" not in (repo.root / ".dvc" / "config.local").read_text()
    # DVC itself reads back what we wrote.
    assert repo.run("remote", "default").stdout.strip() == "storage"


def test_configure_refuses_a_folder_without_dvc(tmp_path: Path) -> None:
    with pytest.raises(DvcRemoteError, match="dvc init"):
        configure_remote(tmp_path, endpoint_url="http://127.0.0.1:1")


def test_configure_cli(make_repo) -> None:
    repo = make_repo()
    proc = subprocess.run(
        [sys.executable, "-m", "infra.local.dvc_remote", "configure", "--repo", str(repo.root),
         "--endpoint", "http://127.0.0.1:18444"],
        cwd=ROOT, env=repo.env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "endpointurl = http://127.0.0.1:18444" in (repo.root / ".dvc" / "config.local").read_text()


@pytest.mark.slow
def test_push_pull_round_trip(local_s3: LocalS3, make_repo, tmp_path: Path) -> None:
    repo = make_repo()
    repo.use_store(local_s3)
    repo.write_files("data", count=60, size=20_000, seed=1)
    (repo.root / "data" / "empty.txt").write_bytes(b"")
    original = repo.md5s("data")
    repo.run("add", "data")
    repo.commit_all("track data")

    pushed = repo.run("push", "--jobs", "4")
    # 61 files plus DVC's directory manifest.
    assert "62 files pushed" in pushed.stdout, pushed.stdout
    assert _object_count(local_s3, "dvc/files/md5/") >= 62

    clone = repo.clone(tmp_path / "clone")
    assert not (clone.root / "data").exists()
    clone.use_store(local_s3)
    clone.run("pull", "--jobs", "4")
    assert clone.md5s("data") == original


@pytest.mark.slow
def test_server_killed_mid_push_fails_clearly_then_recovers(own_s3, make_repo, tmp_path: Path) -> None:
    store: LocalS3 = own_s3()
    store.start(timeout_s=90)
    # botocore retries a refused connection 5 times with backoff (~5 s per file) and DVC goes on
    # through every remaining file, so a dead server would take minutes to report; one attempt
    # per request keeps the failure (and this test) to seconds without changing what fails.
    repo = make_repo(AWS_MAX_ATTEMPTS="1")
    repo.use_store(store)
    # 300 x 64 KiB (19 MiB) in 300 objects: about 2 s to push at --jobs 2 here, long enough to
    # kill the server part-way at any machine speed we expect, short enough to keep the test fast.
    total = 300
    repo.write_files("data", count=total, size=64 * 1024, seed=7)
    original = repo.md5s("data")
    repo.run("add", "data")
    repo.commit_all("track data")

    push = subprocess.Popen([*DVC, "push", "--jobs", "2"], cwd=repo.root, env=repo.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Kill once a few objects have landed, so the push is truly under way.
        deadline = time.monotonic() + 60
        landed = 0
        while push.poll() is None and landed < 20 and time.monotonic() < deadline:
            landed = _object_count(store, "dvc/files/md5/")
            time.sleep(0.05)
        if push.poll() is not None:
            pytest.fail(f"push finished before the kill (landed {landed}); the test data is too small")
        killed = store.kill()
        _, err = push.communicate(timeout=120)
    finally:
        if push.poll() is None:
            push.kill()
            push.wait(timeout=10)

    assert push.returncode != 0
    assert "ERROR: failed to push data to the cloud" in err, err[-3000:]
    assert re.search(r"\d+ files failed to upload", err), err[-3000:]
    assert f"Could not connect to the endpoint URL: \"{store.endpoint_url}/" in err, err[-3000:]

    restarted = store.start(timeout_s=90)
    # kill() behaves like a crash: the pid file it left is found stale and cleaned on restart.
    assert restarted.stale_pid == killed.pid and not restarted.already_running
    present = _object_count(store, "dvc/files/md5/")
    assert 0 < present < total + 1

    second = repo.run("push", "--jobs", "8")
    # Only what the killed push had not finished is uploaded again.
    assert f"{total + 1 - present} files pushed" in second.stdout, (present, second.stdout)
    assert _object_count(store, "dvc/files/md5/") == total + 1

    clone = repo.clone(tmp_path / "clone")
    clone.use_store(store)
    clone.run("pull", "--jobs", "8")
    assert clone.md5s("data") == original
