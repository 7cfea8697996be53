"""The price watch flow on a real (temporary) Prefect server: it publishes the impact, emits
`routerops.prices.changed` only when a price moved; and the project's prefect.yaml deploys."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "prices"
_spec = importlib.util.spec_from_file_location("watch_fixtures", Path(__file__).resolve().parents[1] / "stages" /
                                               "test_watch_prices.py")
assert _spec is not None and _spec.loader is not None
_watch_tests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_watch_tests)
write_trajectories = _watch_tests.write_trajectories


def _api() -> str:
    from prefect.settings import PREFECT_API_URL

    return str(PREFECT_API_URL.value())


def _events(resource_id: str, deadline_s: float = 30.0) -> list[dict[str, Any]]:
    """Events about `resource_id`; the server stores them asynchronously, so poll up to a deadline."""
    end = time.monotonic() + deadline_s
    while True:
        r = httpx.post(f"{_api()}/events/filter", timeout=30, json={
            "filter": {"event": {"prefix": ["routerops."]}, "resource": {"id": [resource_id]}}, "limit": 10})
        r.raise_for_status()
        found = r.json().get("events", [])
        if found or time.monotonic() > end:
            return list(found)
        time.sleep(0.5)


@pytest.fixture
def project(repo_root, tmp_path, monkeypatch) -> Path:
    dest = tmp_path / "project"
    subprocess.run(["git", "clone", "-q", str(repo_root), str(dest)], check=True, timeout=120)
    write_trajectories(dest / "artifacts" / "evaluation" / "trajectories.parquet")
    monkeypatch.delenv("ROUTEROPS_RUNS_DIR", raising=False)
    monkeypatch.delenv("ROUTEROPS_ROOT", raising=False)
    return dest


def _point_at(project: Path, source: Path, fmt: str) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["retrain"].update(price_source=str(source), price_format=fmt)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_a_price_change_emits_the_event_with_the_decision(prefect_server, project) -> None:
    from flows.price_watch import price_watch

    _point_at(project, FIXTURES / "openrouter.json", "openrouter")
    watch = price_watch(repo=project)
    assert watch["changed"] is True and watch["decision"] in {"reprice", "retrain"}
    events = _events(f"routerops.pricing.{watch['new_pricing_id']}")
    assert [e["event"] for e in events] == ["routerops.prices.changed"]
    assert events[0]["payload"]["decision"] == watch["decision"]
    assert events[0]["payload"]["old_pricing_id"] == watch["old_pricing_id"]
    found = httpx.post(f"{_api()}/artifacts/filter", timeout=30, json={
        "artifacts": {"key": {"any_": ["price-impact"]}}, "limit": 1, "offset": 0, "sort": "CREATED_DESC"})
    found.raise_for_status()
    assert found.json()[0]["data"] == (project / "runs" / "price_watch" / "impact.md").read_text()


def test_unchanged_prices_emit_nothing(prefect_server, project) -> None:
    from flows.price_watch import price_watch

    watch = price_watch(repo=project)  # the default source: the pool's own prices
    assert (watch["changed"], watch["event"]) == (False, None)
    assert _events(f"routerops.pricing.{watch['new_pricing_id']}", deadline_s=2.0) == []


def test_prefect_yaml_deploys_the_watch_on_a_daily_schedule(prefect_server, project) -> None:
    env = {**os.environ, "PREFECT_API_URL": _api()}
    prefect = [sys.executable, "-m", "prefect"]
    for cmd in ([*prefect, "work-pool", "create", "routerops-local", "--type", "process", "--overwrite"],
                [*prefect, "--no-prompt", "deploy", "--all"]):
        proc = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = httpx.post(f"{_api()}/deployments/filter", timeout=30, json={"limit": 20})
    r.raise_for_status()
    deployments = {d["name"]: d for d in r.json()}
    assert {"price-watch", "pipeline"} <= set(deployments)
    watch = deployments["price-watch"]
    assert watch["work_pool_name"] == "routerops-local" and watch["entrypoint"] == "flows/price_watch.py:price_watch"
    assert [s["schedule"]["cron"] for s in watch["schedules"]] == ["0 6 * * *"]
    assert watch["concurrency_limit"] == 1 and deployments["pipeline"]["schedules"] == []
