"""The flow's tasks: commands streamed and failing with their own last lines, gates, published files."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from prefect import flow

from flows.tasks import (
    CommandFailed,
    GateFailed,
    gate,
    layout,
    publish_file,
    read_metrics,
    run_command,
    running_services,
)

ROOT = Path(__file__).resolve().parents[2]


def test_run_command_returns_stdout_and_streams_both_streams(tmp_path, capfd) -> None:
    out = run_command([sys.executable, "-c", "import sys; print('to out'); print('to err', file=sys.stderr)"],
                      cwd=tmp_path)
    assert out == "to out\n"
    seen = capfd.readouterr()
    assert (seen.out, seen.err) == ("to out\n", "to err\n")


def test_a_failed_command_reports_its_exit_code_and_last_lines(tmp_path) -> None:
    script = "import sys; [print(f'line {i}', file=sys.stderr) for i in range(40)]; sys.exit(3)"
    with pytest.raises(CommandFailed) as err:
        run_command([sys.executable, "-c", script], cwd=tmp_path)
    lines = str(err.value).splitlines()
    assert lines[0].endswith("` exited 3:") and lines[1:] == [f"line {i}" for i in range(15, 40)]


def test_a_command_past_its_timeout_is_killed(tmp_path) -> None:
    with pytest.raises(CommandFailed, match=r"did not finish in 0\.5 s$"):
        run_command([sys.executable, "-c", "import time; time.sleep(120)"], cwd=tmp_path, timeout_s=0.5)


@pytest.mark.parametrize(("content", "error"), [
    ('{"success": false, "failed": 2}', 'success is False, not true: {"success": false, "failed": 2}'),
    ('{"failed": 0}', 'success is None, not true: {"failed": 0}'),
    ('{"success": 1}', 'success is 1, not true: {"success": 1}'),
])
def test_the_gate_passes_only_a_true_metric(tmp_path, content, error) -> None:
    path = tmp_path / "validation.json"
    path.write_text('{"success": true}')
    assert gate.fn(path, "success") is None
    path.write_text(content)
    with pytest.raises(GateFailed) as err:
        gate.fn(path, "success")
    assert str(err.value) == f"{path}: {error}"


def test_layout_reads_every_path_from_the_projects_params(tmp_path, monkeypatch) -> None:
    for var in ("ROUTEROPS_POOL", "ROUTEROPS_RUNS_DIR"):
        monkeypatch.delenv(var, raising=False)
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copyfile(ROOT / "params.yaml", repo / "params.yaml")
    text = (repo / "params.yaml").read_text().replace("out_dir: artifacts/evaluation", "out_dir: elsewhere/eval")
    (repo / "params.yaml").write_text(text)
    paths = layout.fn(repo)
    assert paths.evaluation_summary == repo / "elsewhere" / "eval" / "summary.md"
    assert paths.dataset_summary == repo / "artifacts" / "dataset" / "summary.md"
    assert (paths.pool_file, paths.validation_metrics, paths.samples_dir) == (
        repo / "pool.yaml", repo / "metrics" / "validation.json", repo / "runs" / "route_samples")


def test_read_metrics_and_running_services_of_a_store_never_started(tmp_path) -> None:
    (tmp_path / "m.json").write_text('{"em": 0.25}')
    assert read_metrics.fn(tmp_path / "m.json") == {"em": 0.25}
    assert running_services.fn(tmp_path) is None


@pytest.mark.timeout(300)
def test_publish_file_makes_an_artifact_and_logs_the_text(prefect_server, tmp_path) -> None:
    import httpx
    from prefect.settings import PREFECT_API_URL

    summary = tmp_path / "summary.md"
    summary.write_text("# Router training\n\n| metric | value |\n")

    @flow
    def publish() -> str:
        return publish_file(summary, "training-test", "Router training")

    assert publish() == summary.read_text()
    # The server's REST API directly: this client/server pair sends nulls the filter endpoint refuses.
    found = httpx.post(f"{PREFECT_API_URL.value()}/artifacts/filter", timeout=30, json={
        "artifacts": {"key": {"any_": ["training-test"]}}, "limit": 10, "offset": 0, "sort": "CREATED_DESC"})
    found.raise_for_status()
    assert [(a["type"], a["data"], a["description"]) for a in found.json()] == [
        ("markdown", summary.read_text(), "Router training")]
