"""The pipeline flow end to end, in a scratch clone of this repository with its own S3 store.

The clone has its own params (a tiny training run), its own data/, and a DVC remote on a
SeaweedFS instance on free loopback ports, so nothing here touches the developer's checkout or
demo store.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
import yaml

from flows.pipeline import pipeline
from flows.tasks import CommandFailed
from infra.local.dvc_remote import configure_remote
from infra.local.s3 import LocalS3, Ports

TINY = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 4,
        "num_kv_heads": 2, "copy_drills": 0, "retry_drills": 0, "context_drills": 0, "sft_examples": 300, "sft_epochs": 1, "grpo_steps": 2,
        "questions_per_step": 2, "group_size": 2, "checkpoint_every": 1}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s3 = LocalS3(data_dir=tmp_path_factory.mktemp("s3"), ports=Ports.free())
    s3.start(timeout_s=90)
    yield s3
    s3.stop(timeout_s=30)


def objects(store: LocalS3, prefix: str) -> list[str]:
    s3 = boto3.client("s3", endpoint_url=store.endpoint_url, aws_access_key_id=store.access_key,
                      aws_secret_access_key=store.secret_key, region_name="us-east-1")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=store.bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def make_clone(repo_root: Path, dest: Path, store: LocalS3, prefix: str) -> Path:
    subprocess.run(["git", "clone", "-q", str(repo_root), str(dest)], check=True, timeout=120)
    # A registry of its own: a clone brings the developer's registry tags along.
    tags = subprocess.run(["git", "tag", "--list", "routerops-router*"], cwd=dest, capture_output=True, text=True,
                          check=True).stdout.split()
    if tags:
        subprocess.run(["git", "tag", "-d", *tags], cwd=dest, capture_output=True, check=True)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["train_router"]["local"].update(TINY)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    configure_remote(dest, endpoint_url=store.endpoint_url, access_key_id=store.access_key,
                     secret_access_key=store.secret_key, url=f"s3://{store.bucket}/{prefix}")
    return dest


@pytest.fixture()
def clone_env(monkeypatch, shared_data, tmp_path):
    monkeypatch.setenv("ROUTEROPS_SHARED_DATA", str(shared_data))
    monkeypatch.delenv("ROUTEROPS_POOL", raising=False)
    monkeypatch.delenv("ROUTEROPS_RUNS_DIR", raising=False)
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "dvc-site-cache"))


def dvc(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.timeout(900)  # several CPU trainings; ~1-3 min on an idle 2-core machine
def test_pipeline_runs_end_to_end_and_pushes(prefect_server, repo_root, store, clone_env, tmp_path) -> None:
    repo = make_clone(repo_root, tmp_path / "clone", store, "ok")
    summary = pipeline(repo=repo, start_store=False)
    assert summary["validation"]["success"] is True
    assert summary["data_card"]["rows"]["train"] == {"hotpotqa": 400, "nq": 400, "triviaqa": 200}
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert summary["train"]["steps"] == TINY["grpo_steps"]
    assert summary["route_samples"]["questions"] == params["demo"]["questions"]
    assert (repo / "artifacts" / "router" / "config.json").is_file()
    # every stage wrote its own summary, which the flow only published
    for out in ("artifacts/dataset", "artifacts/validation", "artifacts/router", "artifacts/evaluation",
                "artifacts/package", "runs/ask_service"):
        assert (repo / out / "summary.md").read_text().startswith("# "), out
    evaluation = summary["evaluation"]
    assert evaluation["verdict"]["router_em"] == evaluation["average"]["router"]["em"]
    assert evaluation["verdict"]["oracle_em_gap"] == pytest.approx(
        evaluation["average"]["oracle"]["em"] - evaluation["average"]["router"]["em"])
    # the packaged Bento answered the demo's questions over HTTP, each reply with its bill
    record = json.loads((repo / "artifacts" / "package" / "package.json").read_text())
    replies = [json.loads(line) for line in (repo / "runs" / "ask_service" / "replies.jsonl").read_text().splitlines()]
    assert len(replies) == params["demo"]["service_questions"]
    assert {r["routerops"]["router_version"] for r in replies} == {record["version"]}
    # the version was registered as a candidate, and its lineage published as a tree and a page
    lineage = (repo / "runs" / "lineage" / "lineage.md").read_text()
    assert lineage.startswith(f"# Router {record['version']}: lineage") and "v0.1.0, stage candidate" in lineage
    assert (repo / "runs" / "lineage" / "lineage.html").read_text().startswith("<!doctype html>")
    # every output the lock file and data.dvc name is in the bucket, and nothing else came from elsewhere
    in_sync = dvc(repo, "status", "--cloud", "--json")
    assert (in_sync.returncode, json.loads(in_sync.stdout)) == (0, {}), in_sync.stderr
    cache = repo / ".dvc" / "cache" / "files" / "md5"
    cached = {p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file()}
    pushed = {k.removeprefix("ok/files/md5/") for k in objects(store, "ok/")}
    # The local cache also holds DVC's run-cache copies of the uncached metrics files, which
    # `dvc push` leaves out by design (`--run-cache` would push them).
    assert pushed <= cached and len(cached - pushed) == 3
    # a second repro does nothing: DVC alone decides, and nothing changed
    again = dvc(repo, "repro")
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == ["'data.dvc' didn't change, skipping", *(
        f"Stage '{s}' didn't change, skipping" for s in ("build_dataset", "validate_dataset", "train_router",
                                                         "evaluate_router", "package_router")),
                                      "Data and pipelines are up to date."]
    assert (repo / "artifacts" / "evaluation" / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    # a price change (prices are not in the prompt) re-runs training, evaluation and packaging (the
    # package holds the pool), never the dataset
    pool = (repo / "pool.yaml").read_text().replace("output_usd_per_mtok: 1.20", "output_usd_per_mtok: 2.40")
    (repo / "pool.yaml").write_text(pool)
    status = json.loads(dvc(repo, "status", "--json").stdout)
    assert set(status) == {"train_router", "evaluate_router", "package_router"}


@pytest.mark.slow
@pytest.mark.timeout(900)  # several CPU trainings; ~1-3 min on an idle 2-core machine
def test_validation_failure_stops_before_push(prefect_server, repo_root, store, clone_env, tmp_path) -> None:
    repo = make_clone(repo_root, tmp_path / "bad", store, "bad")
    seeded = subprocess.run([sys.executable, "-m", "routerops.cli", "data", "seed"], cwd=repo, capture_output=True,
                            text=True, timeout=120)
    assert seeded.returncode == 0, seeded.stderr
    # Crafted bad data: every NQ question of the training source becomes 3,000 characters long,
    # a legal row that no router prompt can hold (rollout.max_prompt_tokens).
    src = repo / "data" / "pool" / "llmrouter_queries_train.jsonl"
    rows = [json.loads(x) for x in src.read_text(encoding="utf-8").split("\n") if x.strip()]
    for i, r in enumerate(rows):
        if r["task_name"] == "natural_qa":
            r["query"] = f"{'why ' * 750}number {i}"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    state = pipeline(repo=repo, seed=False, start_store=False, samples=False, return_state=True)
    assert state.is_failed()
    with pytest.raises(CommandFailed, match=r"dvc repro` exited 255:(.|\n)*validate_dataset: 1 expectation\(s\) FAILED"):
        state.result()
    assert objects(store, "bad/") == []  # nothing was pushed
    card = json.loads((repo / "metrics" / "validation.json").read_text())
    assert (card["success"], card["failed"]) == (False, 1)
    assert "expect_column_values_to_be_between" in (repo / "artifacts" / "validation" / "summary.md").read_text()
    assert not (repo / "artifacts" / "router").exists()  # training never ran
    assert not (repo / "artifacts" / "evaluation").exists()
