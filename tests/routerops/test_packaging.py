"""The router package without BentoML: its files, its version, reading it back and refusing a bad one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from routerops.candidates.types import QuestionInfo
from routerops.config import load_params
from routerops.packaging import (
    PACKAGE_RECORD,
    PackageError,
    PackageRecord,
    file_hashes,
    load_package,
    package_files,
    runtime_env_names,
)
from routerops.pool import load_pool

QUESTIONS = (QuestionInfo("q1", "who wrote hamlet", "nq", ("William Shakespeare",)),)


def _files(repo_root: Path, shared_data: Path, router_dir: Path, **overrides: object) -> dict[str, bytes]:
    params = load_params(repo_root / "params.yaml")
    kwargs: dict = {"params_file": repo_root / "params.yaml", "params": params, "pool_file": repo_root / "pool.yaml",
                    "router_dir": router_dir, "template": None, "matrix_dir": shared_data / "pool",
                    "questions": QUESTIONS, **overrides}
    return package_files(**kwargs)


@pytest.fixture
def router_dir(tmp_path: Path) -> Path:
    d = tmp_path / "router"
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "tiny"}')
    (d / "model.safetensors").write_bytes(b"\x00" * 64)
    (d / "_COMPLETE").write_text("")  # a writer's marker, not part of the package
    return d


def _write(root: Path, files: dict[str, bytes]) -> PackageRecord:
    hashes = file_hashes(files)
    record = PackageRecord(schema_version=1, version="0123456789abcdef", model_tag="m:v", bento_tag="b:v",
                           labels={}, evaluation={}, files=hashes, code={})
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / PACKAGE_RECORD).write_text(record.model_dump_json())
    return record


def test_a_package_reads_back_as_written(repo_root, shared_data, router_dir, tmp_path) -> None:
    files = _files(repo_root, shared_data, router_dir)
    assert sorted(files) == ["params.yaml", "pool.yaml", "replay/pool/llmrouter_quality_test.json",
                             "replay/pool/llmrouter_quality_train.json", "replay/pool/llmrouter_queries_test.jsonl",
                             "replay/pool/llmrouter_queries_train.jsonl", "replay/questions.json",
                             "router/config.json", "router/model.safetensors"]
    record = _write(tmp_path / "pkg", files)
    loaded = load_package(tmp_path / "pkg")
    assert loaded.record == record and loaded.questions == QUESTIONS
    assert loaded.pool.snapshot_id == load_pool(repo_root / "pool.yaml").snapshot_id
    assert loaded.router_dir == tmp_path / "pkg" / "router"


def test_bad_packages_are_refused_with_the_file_named(repo_root, shared_data, router_dir, tmp_path) -> None:
    def tamper(root: Path) -> None:
        (root / "pool.yaml").write_text((root / "pool.yaml").read_text() + "\n# edited\n")

    def drop(root: Path) -> None:
        (root / "router" / "model.safetensors").unlink()

    def bad_record(root: Path) -> None:
        (root / PACKAGE_RECORD).write_text(json.dumps({"version": 3}))

    def no_record(root: Path) -> None:
        (root / PACKAGE_RECORD).unlink()

    cases = [
        (tamper, "{root}/pool.yaml: content does not match routerops-package.json (sha256 {digest}...)"),
        (drop, "{root}/router/model.safetensors: listed in routerops-package.json but missing"),
        (bad_record, "{root}/routerops-package.json: not a package record (8 errors; first: Field required)"),
        (no_record, "{root}/routerops-package.json: missing; not a router package"),
    ]
    files = _files(repo_root, shared_data, router_dir)
    for i, (fault, message) in enumerate(cases):
        root = tmp_path / f"pkg{i}"
        record = _write(root, files)
        fault(root)
        with pytest.raises(PackageError) as err:
            load_package(root)
        assert str(err.value) == message.format(root=root, digest=record.files["pool.yaml"][:12]), fault.__name__
    assert load_package(tmp_path / "pkg0", verify=False).pool is not None  # verify=False reads what is there


def test_package_files_needs_a_trained_router_and_the_replay_matrix(repo_root, shared_data, tmp_path) -> None:
    with pytest.raises(PackageError, match=r"no trained router \(config.json missing\); run train_router first"):
        _files(repo_root, shared_data, tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(PackageError, match=r"^candidates\.backend is replay: the package needs the quality matrix$"):
        _files(repo_root, shared_data, tmp_path, matrix_dir=None)


def test_runtime_env_names_follow_the_profile(repo_root) -> None:
    params = load_params(repo_root / "params.yaml")
    pool = load_pool(repo_root / "pool.yaml")
    assert params.profile == "local" and runtime_env_names(params, pool) == ()
    http = params.model_copy(update={"candidates": params.candidates.model_copy(update={"backend": "openai"})})
    assert runtime_env_names(http, pool) == ("ROUTEROPS_CANDIDATE_BASE_URL", "ROUTEROPS_CANDIDATE_API_KEY")
    gpu = http.model_copy(update={"profile": "gpu"})
    assert runtime_env_names(gpu, pool) == ("ROUTEROPS_CANDIDATE_BASE_URL", "ROUTEROPS_CANDIDATE_API_KEY",
                                            "ROUTEROPS_ROUTER_BASE_URL", "ROUTEROPS_ROUTER_API_KEY")
