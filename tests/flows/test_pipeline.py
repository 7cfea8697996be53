from __future__ import annotations

import json

import pytest

from flows.pipeline import pipeline


@pytest.mark.slow
def test_pipeline_flow_runs_end_to_end(prefect_server, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("ROUTEROPS_RUNS_DIR", str(tmp_path))
    summary = pipeline()
    assert summary["questions"] >= 1 and 0.0 <= summary["em"] <= 1.0
    traces = (tmp_path / "route_samples" / "traces.jsonl").read_text().splitlines()
    assert len(traces) == summary["questions"]
    assert json.loads(traces[0])["calls"]


@pytest.mark.slow
def test_pipeline_stops_on_an_invalid_pool(prefect_server, monkeypatch, tmp_path, repo_root) -> None:
    bad = tmp_path / "pool.yaml"
    bad.write_text((repo_root / "pool.yaml").read_text().replace("descriptor: >-", "descriptor: ''\n    x: >-", 1))
    monkeypatch.setenv("ROUTEROPS_POOL", str(bad))
    monkeypatch.setenv("ROUTEROPS_RUNS_DIR", str(tmp_path / "runs"))
    state = pipeline(return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="pool validate"):
        state.result()
    assert not (tmp_path / "runs").exists()  # nothing ran after the failed gate
