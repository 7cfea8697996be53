"""Where the project finds itself and its data: env vars first, then the working directory."""

from __future__ import annotations

from pathlib import Path

from routerops import paths

ROOT = Path(__file__).resolve().parents[2]


def _project(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "params.yaml").write_text("")
    (path / "pool.yaml").write_text("")
    return path


def test_root_is_the_env_var_then_a_project_working_directory_then_the_package_checkout(tmp_path,
                                                                                         monkeypatch) -> None:
    monkeypatch.delenv("ROUTEROPS_ROOT", raising=False)
    clone = _project(tmp_path / "clone")
    monkeypatch.chdir(clone)
    assert paths.project_root() == clone
    monkeypatch.chdir(tmp_path)  # not a project: no params.yaml and pool.yaml here
    assert paths.project_root() == ROOT
    monkeypatch.setenv("ROUTEROPS_ROOT", str(tmp_path / "elsewhere"))
    assert paths.project_root() == tmp_path / "elsewhere"


def test_files_follow_the_root_unless_an_env_var_names_them(tmp_path, monkeypatch) -> None:
    for var in ("ROUTEROPS_ROOT", "ROUTEROPS_POOL", "ROUTEROPS_RUNS_DIR", "ROUTEROPS_SHARED_DATA"):
        monkeypatch.delenv(var, raising=False)
    clone = _project(tmp_path / "clone")
    monkeypatch.chdir(clone)
    assert (paths.default_pool_file(), paths.default_params_file(), paths.runs_dir(), paths.shared_data_dir()) == (
        clone / "pool.yaml", clone / "params.yaml", clone / "runs", tmp_path / "shared" / "data")
    other = tmp_path / "other"
    assert (paths.default_pool_file(other), paths.default_params_file(other), paths.runs_dir(other)) == (
        other / "pool.yaml", other / "params.yaml", other / "runs")
    monkeypatch.setenv("ROUTEROPS_POOL", "/p/pool.yaml")
    monkeypatch.setenv("ROUTEROPS_RUNS_DIR", "/r")
    monkeypatch.setenv("ROUTEROPS_SHARED_DATA", "/s")
    assert (paths.default_pool_file(other), paths.runs_dir(other), paths.shared_data_dir()) == (
        Path("/p/pool.yaml"), Path("/r"), Path("/s"))
