"""The price watch's stage: no change, a change with its impact and decision, and a bad source
that writes nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from routerops.config import load_params
from routerops.lineage import LineageError
from routerops.pool import load_pool
from routerops.prices import PriceSourceError
from stages.watch_prices import CHANGED_EVENT, Inputs, run, write

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "prices"
NOW = datetime(2026, 12, 2, 6, 0, tzinfo=UTC)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_trajectories) -> Path:
    """A project directory: the repository's params and pool, a small evaluation."""
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(ROOT / "pool.yaml", root / "pool.yaml")
    shutil.copy(ROOT / "params.yaml", root / "params.yaml")
    write_trajectories(root / "artifacts" / "evaluation" / "trajectories.parquet")
    subprocess.run(["git", "init", "-q", str(root)], check=True, timeout=60)  # a registry with no champion
    monkeypatch.delenv("ROUTEROPS_RUNS_DIR", raising=False)
    return root


def _inputs(project: Path, source: Path) -> Inputs:
    pool_file = project / "pool.yaml"
    return Inputs(load_pool(pool_file), pool_file.read_text(), "the workspace", str(source),
                  project / "artifacts/evaluation/trajectories.parquet", NOW)


def _params(fmt: str):
    params = load_params(ROOT / "params.yaml")
    return params.model_copy(update={"retrain": params.retrain.model_copy(update={"price_format": fmt})})


def test_no_change_writes_the_check_and_no_pool(project) -> None:
    out = run(_params("pool"), _inputs(project, project / "pool.yaml"))
    assert (out.watch["changed"], out.watch["decision"], out.watch["event"], out.new_pool_text) == (
        False, "none", None, None)
    write(out, project / "runs" / "price_watch")
    assert sorted(p.name for p in (project / "runs" / "price_watch").iterdir()) == ["_COMPLETE", "impact.md",
                                                                                   "watch.json"]
    assert out.impact_md.startswith("# Price watch: no change")


def test_a_change_is_measured_decided_and_described_as_an_event(project) -> None:
    out = run(_params("openrouter"), _inputs(project, FIXTURES / "openrouter.json"))
    w = out.watch
    assert w["changed"] and w["decision"] in {"reprice", "retrain"} and len(w["changes"]) == 12
    new_pool = yaml.safe_load(out.new_pool_text or "")
    assert new_pool["pricing"]["prices"]["Mixtral-8x22B-Instruct"] == {"input_usd_per_mtok": 0.9,
                                                                        "output_usd_per_mtok": 0.9}
    assert w["event"]["event"] == CHANGED_EVENT
    assert w["event"]["resource"]["prefect.resource.id"] == f"routerops.pricing.{w['new_pricing_id']}"
    assert w["event"]["payload"]["decision"] == w["decision"] and w["impact"]["decision"] == w["decision"]
    assert out.impact_md.startswith("# Price change: router-r1-together-list -> openrouter-2026-12-02")
    json.dumps(w)  # the flow reads it back as JSON
    assert (project / "pool.yaml").read_text() == (ROOT / "pool.yaml").read_text()  # untouched


def test_a_bad_source_fails_and_writes_nothing(project, tmp_path) -> None:
    bad = tmp_path / "bad.json"
    doc = json.loads((FIXTURES / "openrouter.json").read_text())
    doc["data"] = [r for r in doc["data"] if r["id"] != "google/gemma-2-27b-it"]
    bad.write_text(json.dumps(doc))
    with pytest.raises(PriceSourceError, match=r"model 'Gemma-2-27B-Instruct' \(openrouter id "
                                               r"'google/gemma-2-27b-it'\): not in the source$"):
        run(_params("openrouter"), _inputs(project, bad))
    # the same through `python -m stages.watch_prices`, as the flow runs it
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["retrain"].update(price_source=str(bad), price_format="openrouter")
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k not in ("ROUTEROPS_ROOT", "ROUTEROPS_RUNS_DIR")}
    env["PYTHONPATH"] = str(ROOT)  # the stage's code; the project it acts on is the working directory
    proc = subprocess.run([sys.executable, "-m", "stages.watch_prices"], cwd=project, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and "watch_prices: " in proc.stderr and "not in the source" in proc.stderr
    assert not (project / "runs").exists()


def test_with_no_champion_the_workspace_stands_in(project) -> None:
    inputs = Inputs.of_project(project, _params("openrouter"))
    assert inputs.champion.startswith("the workspace (no champion registered")
    assert inputs.pool_text == (project / "pool.yaml").read_text()
    assert inputs.trajectories == project / "artifacts" / "evaluation" / "trajectories.parquet"


def test_no_evaluation_to_measure_on_is_an_error(project) -> None:
    (project / "artifacts" / "evaluation" / "trajectories.parquet").unlink()
    with pytest.raises(LineageError, match=r"trajectories\.parquet: no evaluation to measure the change on; run "
                                           r"`dvc repro evaluate_router` first$"):
        Inputs.of_project(project, _params("openrouter"))
