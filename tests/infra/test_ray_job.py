"""A cluster job that needs nothing from the submitter's disk: a real Ray head on loopback, a job
submitted with `ray job submit` carrying the repository in its runtime env, its data fetched from
the S3 remote by md5, its result written back to S3 and read here."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from infra.local.s3 import LocalS3
from routerops.candidates.replay import QualityMatrix
from routerops.lineage import dvc_dir_md5
from routerops.remote import RemoteConfig
from routerops.service_process import free_port
from routerops.training.cluster import JobError, JobInput, JobStore, main, materialise, submit_command

QUESTIONS = 6


def push_dir(store: JobStore, folder: Path) -> str:
    """Upload `folder` as `dvc push` lays it out (files/md5/..., plus the .dir listing): its md5."""
    entries = {}
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = f.read_bytes()
        md5 = hashlib.md5(data).hexdigest()
        entries[str(f.relative_to(folder))] = md5
        store.put(store.key(md5), data)
    md5 = dvc_dir_md5(entries)
    listing = json.dumps([{"md5": m, "relpath": r} for r, m in sorted(entries.items())], sort_keys=True).encode()
    store.put(store.key(md5), listing)
    return md5


def _store(s3: LocalS3) -> JobStore:
    return JobStore(RemoteConfig("t", f"s3://{s3.bucket}/dvc", s3.endpoint_url, s3.access_key, s3.secret_key, None))


@pytest.fixture(scope="module")
def pushed(local_s3: LocalS3, shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[JobInput, ...]:
    """A dataset (six NQ questions of the quality matrix, the RL schema's columns) and the raw
    snapshot's pool/ folder, pushed to the remote; what the job is given is their md5s only."""
    work = tmp_path_factory.mktemp("submitter")
    matrix = QualityMatrix.load(shared_data / "pool")
    qs = sorted((q for q in matrix.questions.values() if q.data_source == "nq"), key=lambda q: q.id)[:QUESTIONS]
    (work / "dataset" / "rl").mkdir(parents=True)
    for split in ("train", "validation"):
        pq.write_table(pa.Table.from_pylist([
            {"data_source": q.data_source, "reward_model": {"ground_truth": list(q.golden_answers)},
             "extra_info": {"id": q.id, "question": q.text, "split": split}} for q in qs]),
            work / "dataset" / "rl" / f"{split}.parquet")
    (work / "data" / "pool").mkdir(parents=True)
    for f in (shared_data / "pool").iterdir():
        if f.is_file():
            (work / "data" / "pool" / f.name).write_bytes(f.read_bytes())
    store = _store(local_s3)
    return JobInput("artifacts/dataset", push_dir(store, work / "dataset")), JobInput("data", push_dir(
        store, work / "data"))


@pytest.fixture(scope="module")
def ray_head(local_s3: LocalS3) -> Iterator[tuple[str, dict[str, str]]]:
    """`ray start --head --block` on 127.0.0.1 with token authentication (Ray's default since 2.5x)
    and the S3 store's endpoint and keys in the node's environment, where a cluster keeps them,
    never in a job's runtime env. Yields the job server's address and the environment a submitter
    needs (the token, no AWS settings). Stopped by its process group, so no other Ray here is touched."""
    dash = free_port()
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths have a length limit
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16), "RAY_USAGE_STATS_ENABLED": "0"}
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ROUTEROPS_", "RAY_"))}
    submitter = {**base, **auth, "PATH": path}
    ray = str(Path(sys.executable).parent / "ray")
    proc = subprocess.Popen(
        [ray, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={free_port()}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true", "--num-cpus=2",
         f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
         f"--metrics-export-port={free_port()}", f"--temp-dir={temp}", "--disable-usage-stats"],
        env={**submitter, **local_s3.env()}, start_new_session=True, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 240  # a cold head with its dashboard: ~30 s on 2 busy cores
        while subprocess.run([ray, "job", "list", "--address", address], env=submitter, capture_output=True,
                             timeout=120).returncode != 0:
            if proc.poll() is not None:
                pytest.fail(f"ray start exited {proc.returncode} (logs under {temp})")
            if time.monotonic() > deadline:
                pytest.fail(f"the Ray head's job server did not answer within 240 s (logs under {temp})")
            time.sleep(2.0)
        yield address, submitter
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_submitted_job_reads_s3_and_writes_its_result_to_s3(ray_head: tuple[str, dict[str, str]],
                                                              pushed: tuple[JobInput, ...],
                                                              local_s3: LocalS3, repo_root: Path,
                                                              shared_data: Path) -> None:
    remote = f"s3://{local_s3.bucket}/dvc"
    address, submitter_env = ray_head
    cmd = submit_command(address, "rollout", remote_url=remote, inputs=pushed, job_id="rollout-1",
                         python=sys.executable, extra=["--questions", str(QUESTIONS)])
    runtime_env = json.loads(cmd[cmd.index("--runtime-env-json") + 1])
    # Nothing of this machine but the code travels: relative params and pool, no keys, no endpoint.
    assert runtime_env["env_vars"]["ROUTEROPS_PARAMS"] == "params.yaml"
    assert not any(k.startswith("AWS_") for k in runtime_env["env_vars"])
    assert "/.dvc/config.local" in runtime_env["excludes"]
    cmd[0] = str(Path(sys.executable).parent / "ray")
    done = subprocess.run(cmd, env=submitter_env, capture_output=True, text=True, timeout=480)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    store = _store(local_s3)
    result = json.loads(store.read(store.job_key("rollout-1", "result.json")))
    # It ran from Ray's copy of the repository, on inputs it fetched from S3 itself.
    assert Path(result["cwd"]).resolve() != repo_root.resolve()
    assert Path(result["code"]).is_relative_to(Path(result["cwd"]).resolve())
    pool_files = [f for f in (shared_data / "pool").iterdir() if f.is_file()]
    assert result["staged_files"] == {"artifacts/dataset": 2, "data": len(pool_files)}
    # The episode loop and verl's reward entrypoint, every call charged to the run's ledger.
    episodes = result["episodes"]
    assert result["questions"] == len(episodes) == QUESTIONS
    assert {"score", "format", "em", "cost_usd", "cost_norm", "num_calls"} <= set(episodes[0])
    assert all(e["format"] == 0.0 and e["num_calls"] == len(e["calls"]) >= 1 for e in episodes)
    assert result["ledger"]["calls"] == sum(len(e["calls"]) for e in episodes)
    assert result["ledger"]["spent_usd"] == pytest.approx(sum(e["route_cost_usd"] for e in episodes))
    assert sum(e["em"] for e in episodes) >= 1  # the scripted router copies a reply that states gold
    bounds = json.loads(store.read(store.job_key("rollout-1", "cost_bounds.json")))
    assert bounds["questions"] == QUESTIONS and bounds["p5_sqrt_usd"] == 0.0


@pytest.mark.slow
def test_the_verl_job_writes_a_launch_whose_every_path_is_the_jobs(pushed: tuple[JobInput, ...], local_s3: LocalS3,
                                                                   tmp_path: Path, repo_root: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The cluster job's verl mode stages its inputs and runs the dry run where it runs: every
    absolute path in verl's overrides is the job's (its folder or its working directory) and exists."""
    for k, v in local_s3.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("ROUTEROPS_SHARED_DATA", raising=False)
    monkeypatch.chdir(repo_root)
    scratch = tmp_path / "job"
    # The params that sent the job to a cluster still name its address: the job must launch verl
    # here, not submit itself again.
    raw = yaml.safe_load((repo_root / "params.yaml").read_text())
    raw["train_router"]["verl"]["ray_address"] = "http://127.0.0.1:1"
    scratch.mkdir()
    (scratch / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("ROUTEROPS_PARAMS", str(scratch / "params.yaml"))
    code = main(["verl", "--remote", f"s3://{local_s3.bucket}/dvc", *[a for i in pushed for a in ("--input", i.arg())],
                 "--job-id", "verl-1", "--dry-run", "--scratch", str(scratch)])
    assert code == 0
    store = _store(local_s3)
    result = json.loads(store.read(store.job_key("verl-1", "result.json")))
    assert result["paths"] and all(result["paths"].values()), result["paths"]
    assert all(Path(p).is_relative_to(scratch.resolve()) or Path(p).is_relative_to(repo_root.resolve())
               for p in result["paths"])
    assert any(p.endswith("inputs/artifacts/dataset/rl/train.parquet") for p in result["paths"])
    overrides = store.read(store.job_key("verl-1", "overrides.txt")).decode()
    assert f"reward_kwargs.cost_bounds_path={scratch.resolve() / 'verl' / 'cost_bounds.json'}" in overrides
    assert result["command"][:3] == ["python", "-m", "verl.trainer.main_ppo"]
    # verl's workers read the replay data the job staged, through ray_init's runtime env
    data = scratch.resolve() / "inputs" / "data"
    assert f"+ray_kwargs.ray_init.runtime_env.env_vars.ROUTEROPS_SHARED_DATA={data}" in overrides.split()
    assert any("checkpoint_dir is relative" in w for w in result["warnings"])
    assert "returncode" not in result  # --dry-run: verl was not started


def test_a_job_id_that_is_not_one_folder_name_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rollout", "--remote", "s3://b/p", "--job-id", "../x"]) == 2
    assert capsys.readouterr().err == ("routerops.training.cluster: --job-id '../x': letters, digits, '.', '_' and '-' "
                                       "only (it names a folder and an S3 prefix)\n")


def test_a_job_refuses_inputs_whose_objects_do_not_match(local_s3: LocalS3, tmp_path: Path) -> None:
    store = _store(local_s3)
    good = hashlib.md5(b"x").hexdigest()
    store.put(store.key(good), b"x")
    bad = hashlib.md5(b"y").hexdigest()
    store.put(store.key(bad), b"not y")  # an object whose content is not its name
    assert materialise(store, JobInput("f.txt", good), tmp_path) == 1 and (tmp_path / "f.txt").read_bytes() == b"x"
    with pytest.raises(JobError) as info:
        materialise(store, JobInput("g.txt", bad), tmp_path)
    assert str(info.value) == f"{store.url(bad)}: content has md5 {hashlib.md5(b'not y').hexdigest()}, expected {bad}"
    assert not (tmp_path / "g.txt").exists()


BAD_INPUTS = [
    ("artifacts/dataset", "--input 'artifacts/dataset': expected PATH=<32 hex md5>[.dir]"),
    ("d=abc", "--input 'd=abc': expected PATH=<32 hex md5>[.dir]"),
    (f"/abs={'0' * 32}", f"--input '/abs={'0' * 32}': the path must be relative to the repository, inside it"),
    (f"../up={'0' * 32}.dir", f"--input '../up={'0' * 32}.dir': the path must be relative to the repository, inside it"),
]


@pytest.mark.parametrize(("text", "message"), BAD_INPUTS)
def test_malformed_job_inputs_are_refused(text: str, message: str) -> None:
    with pytest.raises(JobError) as info:
        JobInput.parse(text)
    assert str(info.value) == message


def test_a_params_file_outside_the_repository_cannot_travel(tmp_path: Path) -> None:
    outside = tmp_path / "p.yaml"
    outside.write_text("x: 1\n")
    with pytest.raises(JobError, match="is outside the repository"):
        submit_command("http://127.0.0.1:1", "rollout", remote_url="s3://b/p", inputs=(), job_id="j",
                       params_path=str(outside))
