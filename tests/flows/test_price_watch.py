"""The price watch flow on a real (temporary) Prefect server: it publishes the impact and emits
`routerops.prices.changed` only when a price moved."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "prices"


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
def project(repo_root, tmp_path, monkeypatch, write_trajectories) -> Path:
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
