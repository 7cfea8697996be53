"""The price-change loop end to end on a real local stack: a Prefect server, the deployments of
prefect.yaml, a process worker and an S3 store, all on loopback, in a scratch clone with a tiny
training run.

In order (each test builds on the one before): the pipeline deployment builds and registers a
version, promoted to champion; unchanged prices: the watch runs and nothing else does; a malformed
price file: the watch fails and writes nothing; a uniform x2 change with the S3 store down: the
triggered retrain fails at the push and changes nothing, and a re-run with the store back
promotes a repriced version (same weights, new prices); a relative change (all models but one x10): the
challenger's training is killed, nothing changes, and a re-run resumes, evaluates the challenger
and promotes or rejects it with the numbers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from infra.local.stack import Stack
from routerops.service_process import free_port

pytestmark = [pytest.mark.slow]

TINY = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 4,
        "num_kv_heads": 2, "copy_drills": 0, "retry_drills": 0, "context_drills": 0, "sft_examples": 300, "sft_epochs": 1, "grpo_steps": 2,
        "questions_per_step": 2, "group_size": 2, "checkpoint_every": 1}
RUN_TIMEOUT_S = 900.0


@pytest.fixture(scope="module")
def stack(repo_root: Path, shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("retrain")
    clone = home / "project"
    subprocess.run(["git", "clone", "-q", str(repo_root), str(clone)], check=True, timeout=120)
    tags = subprocess.run(["git", "tag", "--list", "routerops-router*"], cwd=clone, capture_output=True, text=True,
                          check=True).stdout.split()
    if tags:  # a registry of its own
        subprocess.run(["git", "tag", "-d", *tags], cwd=clone, capture_output=True, check=True)
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["train_router"]["local"].update(TINY)
    params["retrain"]["price_source"] = str(home / "prices.yaml")
    params["stack"]["prefect_port"], params["serve"]["port"] = free_port(), free_port()
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (home / "prices.yaml").write_text((clone / "pool.yaml").read_text())
    saved = {k: os.environ.get(k) for k in ("ROUTEROPS_SHARED_DATA", "DVC_SITE_CACHE_DIR", "ROUTEROPS_RUNS_DIR")}
    os.environ.update(ROUTEROPS_SHARED_DATA=str(shared_data), DVC_SITE_CACHE_DIR=str(home / "dvc-site-cache"))
    os.environ.pop("ROUTEROPS_RUNS_DIR", None)
    s = Stack.of_project(clone)
    try:
        s.up()
        yield s
    finally:
        s.down()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# -- helpers: the Prefect REST API (prefect 3.8.8's client sends limit=null on filters) -------------

def _post(stack: Stack, path: str, body: dict[str, Any]) -> Any:
    r = httpx.post(f"{stack.api_url}{path}", json=body, timeout=30)
    r.raise_for_status()
    return r.json()


def _deployment(stack: Stack, name: str) -> str:
    [d] = [d for d in _post(stack, "/deployments/filter", {"limit": 10, "offset": 0}) if d["name"] == name]
    return str(d["id"])


def _runs(stack: Stack, deployment: str) -> list[dict[str, Any]]:
    return list(_post(stack, "/flow_runs/filter", {
        "flow_runs": {"deployment_id": {"any_": [_deployment(stack, deployment)]}}, "limit": 50, "offset": 0,
        "sort": "EXPECTED_START_TIME_ASC"}))


def _start(stack: Stack, deployment: str, **parameters: Any) -> str:
    return str(_post(stack, f"/deployments/{_deployment(stack, deployment)}/create_flow_run",
                     {"parameters": parameters})["id"])


def _wait(stack: Stack, run_id: str, timeout_s: float = RUN_TIMEOUT_S) -> dict[str, Any]:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        run = httpx.get(f"{stack.api_url}/flow_runs/{run_id}", timeout=30).json()
        if run["state_type"] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}:
            return dict(run)
        time.sleep(1.0)
    raise AssertionError(f"flow run {run_id} did not finish in {timeout_s:.0f} s; worker log:\n"
                         f"{stack.worker().log_tail(40)}")


def _triggered(stack: Stack, known: int, timeout_s: float = 120.0) -> dict[str, Any]:
    """The retrain run an event created after the `known` ones."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        runs = _runs(stack, "retrain")
        if len(runs) > known:
            return runs[known]
        time.sleep(0.5)
    raise AssertionError("no retrain run was triggered")


def _events(stack: Stack, name: str) -> list[dict[str, Any]]:
    """Events named `name`; the server stores them asynchronously, so wait up to 30 s for one."""
    end = time.monotonic() + 30
    while True:
        found = _post(stack, "/events/filter", {"filter": {"event": {"name": [name]}}, "limit": 50}).get("events", [])
        if found or time.monotonic() > end:
            return list(found)
        time.sleep(0.5)


def _cli(stack: Stack, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "routerops.cli", *args], cwd=stack.root, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "ROUTEROPS_ROOT": str(stack.root)})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _versions(stack: Stack) -> list[dict[str, Any]]:
    return list(json.loads(_cli(stack, "lineage", "list", "--json")))


def _record(stack: Stack, ref: str) -> dict[str, Any]:
    return dict(json.loads(_cli(stack, "lineage", "show", ref, "--json"))["record"])


def _champion(stack: Stack) -> dict[str, Any]:
    [c] = [v for v in _versions(stack) if v["stage"] == "champion"]
    return c


def _set_prices(stack: Stack, factors: dict[str, float] | float) -> None:
    """Write the watch's price list: the champion's prices times a factor (one for all, or per model)."""
    prices = _record(stack, "champion")["prices"]["usd_per_mtok"]
    pool = yaml.safe_load((stack.root / "pool.yaml").read_text())
    for name, p in prices.items():
        f = factors if isinstance(factors, float) else factors.get(name, 1.0)
        pool["pricing"]["prices"][name] = {"input_usd_per_mtok": round(p["input"] * f, 6),
                                           "output_usd_per_mtok": round(p["output"] * f, 6)}
    (stack.root.parent / "prices.yaml").write_text(yaml.safe_dump(pool, sort_keys=False))


def _watch(stack: Stack) -> tuple[dict[str, Any], dict[str, Any] | None]:
    run = _wait(stack, _start(stack, "price-watch"))
    path = stack.root / "runs" / "price_watch" / "watch.json"
    return run, (json.loads(path.read_text()) if path.is_file() else None)


def _training_pid(workspace: Path, timeout_s: float = RUN_TIMEOUT_S) -> int:
    """The pid of `stages.train_router` running in `workspace`, once it runs."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                cwd = os.readlink(proc / "cwd")
            except OSError:
                continue
            if "stages.train_router" in cmd and Path(cwd) == workspace:
                return int(proc.name)
        time.sleep(0.1)
    raise AssertionError(f"no training ran in {workspace}")


class Load:
    """`threads` clients asking the router service one question after another (no client retry:
    every failure counts) until stopped; keeps each reply's answering version and bill."""

    def __init__(self, stack: Stack, threads: int = 2, per_thread_max: int = 500) -> None:
        from openai import OpenAI

        from routerops.keys import KeyStore

        svc = stack.service()
        key = KeyStore(svc.keys_db).create("load test").secret
        self.client = OpenAI(base_url=f"{svc.url}/v1", api_key=key, max_retries=0, timeout=120)
        self.stop = threading.Event()
        self.replies: list[tuple[str, dict[str, Any]]] = []
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._ask, args=(i, per_thread_max), daemon=True)
                        for i in range(threads)]

    def _ask(self, i: int, n: int) -> None:
        for k in range(n):
            if self.stop.is_set():
                return
            try:
                raw = self.client.chat.completions.with_raw_response.create(
                    model="routerops-router", messages=[{"role": "user", "content": QUESTIONS[(i + k) % 3]}])
                body = raw.parse()
                self.replies.append((raw.headers["x-routerops-upstream-version"],
                                     dict((body.model_extra or {})["routerops"])))
            except Exception as exc:  # every kind of failure is what this counts
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=180)


QUESTIONS = ("who wrote the declaration of independence", "what is the capital of australia",
             "when did the titanic sink")


# -- the loop ----------------------------------------------------------------------------------------

@pytest.mark.timeout(1200)
def test_the_pipeline_deployment_builds_the_first_champion(stack: Stack) -> None:
    run = _wait(stack, _start(stack, "pipeline", serve=False, samples=False))
    assert run["state_type"] == "COMPLETED", stack.worker().log_tail(40)
    _cli(stack, "lineage", "promote", "candidate")
    assert _champion(stack)["version"] == "v0.1.0"
    # `make up` again: now there is a champion to serve
    said = stack.up()
    assert said[-2] == f"router service: {stack.service().url}/v1 (model routerops-router), version v0.1.0"


@pytest.mark.timeout(300)
def test_unchanged_prices_run_the_watch_and_nothing_else(stack: Stack) -> None:
    run, watch = _watch(stack)
    assert run["state_type"] == "COMPLETED" and watch is not None
    assert (watch["changed"], watch["decision"], watch["event"]) == (False, "none", None)
    assert watch["champion"].startswith("champion v0.1.0 (")
    assert _runs(stack, "retrain") == [] and _events(stack, "routerops.prices.changed") == []


@pytest.mark.timeout(300)
def test_a_malformed_price_file_fails_the_watch_and_writes_nothing(stack: Stack) -> None:
    before = (stack.root / "runs" / "price_watch" / "watch.json").read_text()
    (stack.root.parent / "prices.yaml").write_text("pricing: [not, a, pool\n")
    run, _ = _watch(stack)
    assert run["state_type"] == "FAILED"
    assert "watch_prices: " in stack.worker().log_tail(200)
    assert (stack.root / "runs" / "price_watch" / "watch.json").read_text() == before
    assert _champion(stack)["version"] == "v0.1.0" and _runs(stack, "retrain") == []


@pytest.mark.timeout(1200)
def test_a_uniform_change_reprices_and_survives_the_store_going_down(stack: Stack) -> None:
    _set_prices(stack, 2.0)
    stack.store().stop(timeout_s=30)
    run, watch = _watch(stack)  # the champion's evaluation is in the local cache: no S3 needed
    assert run["state_type"] == "COMPLETED" and watch is not None
    assert watch["decision"] == "reprice", watch["reason"]
    pricing = watch["new_pricing_id"]
    failed = _wait(stack, _triggered(stack, 0)["id"])
    assert failed["parameters"] == {"pricing_id": pricing}
    assert failed["state_type"] == "FAILED"  # at `dvc push`: nothing registered, nothing promoted
    assert [v["version"] for v in _versions(stack)] == ["v0.1.0"] and _champion(stack)["version"] == "v0.1.0"
    assert stack.service().status()[0].endswith(f"serving v0.1.0 ({_record(stack, 'v0.1.0')['version']}) on port "
                                                f"{stack.service().state()['current']['port']}")  # type: ignore[index]
    stack.store().start(timeout_s=90)
    with Load(stack) as load:  # a steady load through the switch
        again = _wait(stack, _start(stack, "retrain", pricing_id=pricing))
        seen = len(load.replies)
        deadline = time.monotonic() + 120
        while len(load.replies) < seen + 4 and time.monotonic() < deadline:
            time.sleep(0.2)  # a few answers after the promotion
    assert again["state_type"] == "COMPLETED", stack.worker().log_tail(60)
    assert load.errors == [], load.errors[:5]
    promotion = json.loads((stack.root / "runs" / "retrain" / pricing / "promotion.json").read_text())
    assert (promotion["action"], promotion["champion"], promotion["replaced"]) == ("reprice", "v0.2.0", "v0.1.0")
    old, new = _record(stack, "v0.1.0"), _record(stack, "v0.2.0")
    assert new["model"]["router"]["md5"] == old["model"]["router"]["md5"]  # the same weights...
    assert new["prices"]["pricing_id"] == pricing != old["prices"]["pricing_id"]  # ...billed at the new prices
    assert new["parent"] == old["version"]
    [event] = _events(stack, "routerops.router.repriced")
    assert event["payload"]["semver"] == "v0.2.0"
    assert {v["version"]: v["stage"] for v in _versions(stack)} == {"v0.1.0": "archived", "v0.2.0": "champion"}
    # every request succeeded, each answered and billed by one version at that version's prices
    by_version = {r["version"]: r for r in (old, new)}
    answered = [version for version, _ in load.replies]
    assert set(answered) == {old["version"], new["version"]}
    assert answered[-4:] == [new["version"]] * 4  # and the service ends on the new one
    assert stack.service().status()[0].split("serving ")[1].startswith(f"v0.2.0 ({new['version']})")
    for version, bill in load.replies:
        record = by_version[version]
        assert (bill["router_version"], bill["pricing_id"]) == (version, record["prices"]["pricing_id"])
        for call in bill["calls"]:
            price = record["prices"]["usd_per_mtok"][call["model"]]["output"]
            assert call["usd"] == pytest.approx(call["completion_tokens"] * price / 1e6, rel=1e-9, abs=1e-15)
    print(f"\nswitch under load: {len(load.replies)} requests, {len(load.errors)} failed, "
          f"{answered.count(old['version'])} by {old['version']}, {answered.count(new['version'])} by {new['version']}")


@pytest.mark.timeout(1800)
def test_a_relative_change_retrains_recovers_from_a_killed_training_and_decides(stack: Stack) -> None:
    # Every model but the priciest per token ten times dearer: Mixtral becomes the cheapest, so
    # wherever it answers it is the new cheapest correct model. (Mixtral x10 alone moves nothing
    # this champion relies on: no baseline's cheapest correct answer comes from it.)
    _set_prices(stack, {name: 10.0 for name in _record(stack, "champion")["prices"]["usd_per_mtok"]
                        if name != "Mixtral-8x22B-Instruct"})
    known = len(_runs(stack, "retrain"))
    run, watch = _watch(stack)
    assert run["state_type"] == "COMPLETED" and watch is not None
    assert watch["decision"] == "retrain", watch["reason"]
    pricing = watch["new_pricing_id"]
    triggered = _triggered(stack, known)
    os.kill(_training_pid(stack.root / ".routerops" / "challengers" / pricing), signal.SIGKILL)
    assert _wait(stack, triggered["id"])["state_type"] == "FAILED"
    assert _champion(stack)["version"] == "v0.2.0" and len(_versions(stack)) == 2
    served = stack.service().state()
    assert served is not None and served["current"]["semver"] == "v0.2.0" and served["previous"] is None
    again = _wait(stack, _start(stack, "retrain", pricing_id=pricing))
    assert again["state_type"] == "COMPLETED", stack.worker().log_tail(60)
    result = json.loads((stack.root / "runs" / "retrain" / pricing / "comparison.json").read_text())
    c = result["comparison"]
    assert result["verdict"] in {"promote", "reject"} and c["questions"] == 420
    assert result["verdict"] == ("promote" if c["gain_ci"][0] > c["min_objective_gain"] else "reject")
    [evaluated] = _events(stack, "routerops.challenger.evaluated")
    assert evaluated["payload"]["verdict"] == result["verdict"]
    if result["verdict"] == "promote":
        assert _champion(stack)["version"] == "v0.3.0"
        assert len(_events(stack, "routerops.router.promoted")) == 1
    else:
        assert _champion(stack)["version"] == "v0.2.0" and len(_versions(stack)) == 2
        [rejected] = _events(stack, "routerops.router.rejected")
        assert rejected["payload"]["reason"] == result["reason"]
    # the service serves whichever version is champion now
    served = stack.service().state()
    assert served is not None and served["current"]["semver"] == _champion(stack)["version"]
