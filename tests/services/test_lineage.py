"""`routerops lineage` end to end: a packaged router pushed to a real loopback S3 store, registered
in git tags, verified, tampered with, diffed against a version packaged under other prices, and
asked of a running service. Every command runs as a user runs it (`python -m routerops.cli`).

The project is a copy of the `packaged` fixture's clone (its git, DVC cache and BentoML store), so
the other service tests keep theirs unchanged. Tests that tamper restore what they changed; the
store is stopped by the last test, which checks a dead store fails fast, and by the fixture.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import gto.api
import pytest

from infra.local.dvc_remote import configure_remote
from infra.local.s3 import LocalS3, Ports, ServerState
from routerops.lineage import LineageRecord, verify_record
from routerops.packaging import MODEL_ARCHIVE
from routerops.registry import GitRepo, Registry
from routerops.remote import DvcS3Remote, read_remote_config

ARTIFACT = "routerops-router"


@dataclass
class Audited:
    project: Path
    store: LocalS3
    env: dict[str, str]

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "routerops.cli", "lineage", *args], cwd=self.project,
                              env=self.env, capture_output=True, text=True, timeout=timeout)

    def dvc(self, *args: str, timeout: float = 1500) -> None:
        proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=self.project, env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"dvc {args}: {proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"

    def s3(self) -> Any:
        return boto3.client("s3", endpoint_url=self.store.endpoint_url, aws_access_key_id=self.store.access_key,
                            aws_secret_access_key=self.store.secret_key, region_name="us-east-1")

    def registry(self) -> Registry:
        return Registry(self.project, ARTIFACT)


@pytest.fixture(scope="module")
def audited(packaged, tmp_path_factory, shared_data) -> Iterator[Audited]:
    project = tmp_path_factory.mktemp("audit") / "project"
    shutil.copytree(packaged.project, project, symlinks=True)
    # A registry of its own: the clone came with whatever registry tags the developer's checkout has.
    tags = subprocess.run(["git", "tag", "--list", f"{ARTIFACT}*"], cwd=project, capture_output=True, text=True,
                          check=True).stdout.split()
    if tags:
        subprocess.run(["git", "tag", "-d", *tags], cwd=project, capture_output=True, check=True)
    store = LocalS3(data_dir=tmp_path_factory.mktemp("audit-s3"), ports=Ports.free())
    store.start(timeout_s=90)
    try:
        configure_remote(project, endpoint_url=store.endpoint_url, access_key_id=store.access_key,
                         secret_access_key=store.secret_key)
        env = {**os.environ, "ROUTEROPS_SHARED_DATA": str(shared_data), "ROUTEROPS_PROGRESS": "off",
               "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "AWS_MAX_ATTEMPTS": "1"}
        env.pop("ROUTEROPS_ROOT", None)
        audited = Audited(project, store, env)
        audited.dvc("push")
        registered = audited.cli("register")
        assert registered.returncode == 0, registered.stderr
        assert registered.stdout.startswith(f"registered v0.1.0 = router {packaged.record.version} (candidate)")
        yield audited
    finally:
        if store.status().state is ServerState.RUNNING:
            store.kill()
        store.stop(timeout_s=10)


def _listing(audited: Audited, md5: str) -> list[dict[str, str]]:
    remote = DvcS3Remote(read_remote_config(audited.project))
    return list(json.loads(remote.get(md5)))


@contextmanager
def _tampered(audited: Audited, key: str, change: Any) -> Iterator[None]:
    """The object at `key` changed by `change(s3, original)` inside the block, restored after."""
    s3 = audited.s3()
    original = s3.get_object(Bucket=audited.store.bucket, Key=key)["Body"].read()
    try:
        change(s3, original)
        yield
    finally:
        s3.put_object(Bucket=audited.store.bucket, Key=key, Body=original)


def test_a_clean_version_verifies_and_gto_sees_it(audited, packaged) -> None:
    proc = audited.cli("verify", "v0.1.0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    checks = [ln for ln in lines if ln.startswith(("ok", "FAIL"))]
    assert checks and all(ln.startswith("ok  ") for ln in checks)
    for role in ("raw data (data)", "dataset (artifacts/dataset)", "validation (artifacts/validation)",
                 "checkpoint (checkpoints/train_router)", "router (artifacts/router)",
                 "evaluation (artifacts/evaluation)", "package (artifacts/package)", "package lineage.json",
                 "model archive router.bentomodel weights", "dvc.lock at registry commit", "code commit"):
        assert any(ln.startswith(f"ok    {role}") for ln in checks), role
    assert any("BentoML store model" in ln and "weights" in ln for ln in checks)
    assert lines[-1] == "v0.1.0 verifies"
    # the three copies of the record are equal, and GTO reads the registry
    entry = audited.registry().resolve("v0.1.0")
    on_disk = LineageRecord.model_validate_json((audited.project / "artifacts" / "package" / "lineage.json").read_text())
    assert entry.record == on_disk and entry.router_version == packaged.record.version
    assert gto.api.show(str(audited.project))[ARTIFACT]["stage"] == {"candidate": "v0.1.0"}


ROLES = [("raw data", "data"), ("dataset", "artifacts/dataset"), ("validation", "artifacts/validation"),
         ("checkpoint", "checkpoints/train_router"), ("router", "artifacts/router"),
         ("evaluation", "artifacts/evaluation"), ("package", "artifacts/package")]


@pytest.mark.parametrize(("role", "path"), ROLES)
def test_one_changed_byte_in_any_artifact_fails_naming_it_and_its_object(audited, role, path) -> None:
    entry = audited.registry().resolve("v0.1.0")
    art = {**entry.record.artifacts(), "package": entry.package}[role]
    first = sorted(_listing(audited, art.md5), key=lambda e: e["relpath"])[0]
    remote = DvcS3Remote(read_remote_config(audited.project))
    key = remote.key(first["md5"])

    def flip(s3: Any, original: bytes) -> None:
        s3.put_object(Bucket=audited.store.bucket, Key=key, Body=bytes([original[0] ^ 1]) + original[1:])

    with _tampered(audited, key, flip):
        proc = audited.cli("verify", "v0.1.0")
        assert proc.returncode == 1
        assert f"FAIL  {role} ({path}): {first['relpath']} at s3://{audited.store.bucket}/{key} has md5 " in proc.stdout
        assert proc.stderr.strip().startswith(f"error: v0.1.0 does NOT verify: {role}")
    assert audited.cli("verify", "v0.1.0").returncode == 0  # restored


def test_a_changed_directory_listing_and_a_deleted_object_fail_naming_them(audited) -> None:
    entry = audited.registry().resolve("v0.1.0")
    remote = DvcS3Remote(read_remote_config(audited.project))
    router = entry.record.model.router
    listing_key = remote.key(router.md5)

    def append(s3: Any, original: bytes) -> None:
        s3.put_object(Bucket=audited.store.bucket, Key=listing_key, Body=original + b" ")

    with _tampered(audited, listing_key, append):
        proc = audited.cli("verify", "v0.1.0")
        assert proc.returncode == 1
        assert f"FAIL  router (artifacts/router): directory listing s3://{audited.store.bucket}/{listing_key} has md5" \
            in proc.stdout
    weights = next(e for e in _listing(audited, router.md5) if e["relpath"] == "model.safetensors")
    key = remote.key(weights["md5"])
    with _tampered(audited, key, lambda s3, _: s3.delete_object(Bucket=audited.store.bucket, Key=key)):
        proc = audited.cli("verify", "v0.1.0")
        assert proc.returncode == 1
        assert f"FAIL  router (artifacts/router): model.safetensors missing at s3://{audited.store.bucket}/{key}" \
            in proc.stdout


def test_swapped_weights_in_the_bentoml_store_fail(audited, packaged) -> None:
    model_dir = audited.project / ".routerops" / "bentoml" / "models" / ARTIFACT / packaged.record.version
    weights = model_dir / "router" / "model.safetensors"
    original = weights.read_bytes()
    try:
        weights.write_bytes(original[::-1])
        proc = audited.cli("verify", "v0.1.0")
        assert proc.returncode == 1
        failed = [ln for ln in proc.stdout.splitlines() if ln.startswith("FAIL")]
        assert len(failed) == 2, proc.stdout  # the archived model in S3 still verifies
        assert failed[0].startswith(f"FAIL  BentoML store model {ARTIFACT}:{packaged.record.version}")
        assert failed[0].endswith("files: differ from the record: router/model.safetensors")
        assert failed[1].endswith("weights: differ from the router artifact: model.safetensors")
    finally:
        weights.write_bytes(original)


def test_a_record_whose_commit_does_not_exist_fails(audited, tmp_path) -> None:
    entry = audited.registry().resolve("v0.1.0")
    forged = entry.record.model_copy(update={"code": entry.record.code.model_copy(update={"commit": "0" * 40})})
    checks, _ = verify_record(forged, package=entry.package, lock_commit=entry.commit,
                              store=DvcS3Remote(read_remote_config(audited.project)), git=GitRepo(audited.project),
                              scratch=tmp_path, model_archive=MODEL_ARCHIVE)
    failed = [c.line() for c in checks if not c.ok]
    assert failed[0] == f"FAIL  code commit: {'0' * 40} does not exist in this repository"
    # the package's own copies of the record now disagree with it too
    assert "FAIL  package lineage.json: differs from the registry's record" in failed


def test_list_show_and_the_lineage_page(audited, packaged, tmp_path) -> None:
    listed = audited.cli("list")
    assert listed.returncode == 0
    row = listed.stdout.splitlines()[1].split()
    assert row[:3] == ["v0.1.0", packaged.record.version, "candidate"]
    assert float(row[4]) == pytest.approx(packaged.record.evaluation["em"], abs=5e-4)
    shown = audited.cli("show", "candidate", "--html", str(tmp_path / "page.html"))
    assert shown.returncode == 0, shown.stderr
    tree = shown.stdout
    assert tree.startswith(f"router {packaged.record.version}")
    for part in (f"Bento {packaged.record.bento_tag}", f"BentoML model {packaged.record.model_tag}",
                 "router weights artifacts/router", "checkpoint checkpoints/train_router", "dataset artifacts/dataset",
                 "raw data data", "registry: registry version v0.1.0, stage candidate"):
        assert part in tree, part
    page = (tmp_path / "page.html").read_text()
    assert 'src="data:image/png;base64,iVBORw0KGgo' in page  # the evaluation's Pareto plot, embedded
    as_json = json.loads(audited.cli("show", "v0.1.0", "--json").stdout)
    assert as_json["record"]["version"] == packaged.record.version


def test_show_asks_a_running_service_which_version_it_serves(audited, packaged, serve) -> None:
    svc = serve()
    proc = audited.cli("show", "--service", svc.base_url)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{svc.base_url} serves router {packaged.record.version}\n"
                                  f"router {packaged.record.version}")


def test_a_version_under_new_prices_diffs_by_its_prices_and_metrics_and_replaces_the_champion(audited) -> None:
    assert audited.cli("promote", "v0.1.0").stdout.startswith("v0.1.0 (router ")
    champion = audited.registry().champion()
    assert champion is not None
    pool = audited.project / "pool.yaml"
    # Every output price tripled: whichever models the tiny router calls, its dollars change.
    old_prices = {m: p["output"] for m, p in champion.record.prices.usd_per_mtok.items()}
    pool.write_text(re.sub(r"output_usd_per_mtok: ([0-9.]+)", lambda m: f"output_usd_per_mtok: {float(m[1]) * 3:.2f}",
                           pool.read_text()))
    audited.dvc("repro", "package_router")
    audited.dvc("push")
    registered = audited.cli("register")
    assert registered.stdout.startswith("registered v0.2.0"), registered.stderr
    new = audited.registry().resolve("v0.2.0")
    assert new.record.parent == champion.router_version  # trained to replace the champion
    diff = json.loads(audited.cli("diff", "v0.1.0", "v0.2.0", "--json").stdout)
    assert [(c["key"], c["old"], c["new"]) for c in diff["prices"]] == sorted(
        (f"{m}.output_usd_per_mtok", p, pytest.approx(p * 3)) for m, p in old_prices.items())
    assert diff["params"] == diff["data"] == diff["code"] == diff["environment"] == []
    assert diff["commits"] == diff["files_touched"] == []
    # the metrics that differ, each with its old and new value, and no other
    old_m, new_m = champion.record.evaluation.metrics, new.record.evaluation.metrics
    assert {c["key"]: (c["old"], c["new"]) for c in diff["metrics"]} == {
        k: (old_m[k], new_m[k]) for k in old_m if old_m[k] != new_m[k]}
    if (new_m["calls_per_question"] or 0) > 0:
        assert new_m["usd_per_question"] != old_m["usd_per_question"]
    # what the retrain made is listed (the weights and the evaluation), nothing about its inputs
    assert {c["key"] for c in diff["artifacts"]} <= {"router", "checkpoint", "evaluation"}
    text = audited.cli("diff", "v0.1.0", "v0.2.0").stdout
    assert "  Mixtral-8x22B-Instruct.output_usd_per_mtok: 1.2 -> 3.6\n" in text and "params: unchanged" in text
    assert audited.cli("verify", "v0.2.0").returncode == 0
    promoted = audited.cli("promote", "v0.2.0")
    assert promoted.stdout.strip().endswith("v0.1.0 (router " + champion.router_version + ") archived")
    assert gto.api.show(str(audited.project))[ARTIFACT]["stage"] == {"champion": "v0.2.0", "archived": "v0.1.0"}


def test_verify_with_the_store_down_fails_at_once_with_a_clear_message(audited) -> None:
    audited.store.kill()
    proc = audited.cli("verify", "v0.1.0", timeout=60)
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    s3_line = next(i for i, ln in enumerate(lines) if "S3 remote" in ln)
    assert lines[s3_line].startswith(f"FAIL  S3 remote: S3 remote 'storage' at {audited.store.endpoint_url} is "
                                     "unreachable: Could not connect to the endpoint URL")
    # one connection attempt, then no object is tried
    assert not any(ln.startswith(("ok", "FAIL")) for ln in lines[s3_line + 1:])
    assert "fetched 0 objects, 0 bytes" in proc.stdout
