"""Session-wide test setup: telemetry off, offline hub, shared fixtures.

No __init__.py anywhere under tests/: pytest runs in importlib mode so that our test modules
never collide with the top-level `tests` package the verl wheel installs.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from routerops.lineage import (
    ArtifactRef,
    CodeInfo,
    ConfigInfo,
    DataInfo,
    EnvironmentInfo,
    EvaluationInfo,
    LineageRecord,
    ModelInfo,
    PricesInfo,
    version_id,
)

for _k, _v in {
    "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "BENTOML_DO_NOT_TRACK": "true",
    "DVC_NO_ANALYTICS": "1", "RAY_USAGE_STATS_ENABLED": "0", "WANDB_MODE": "disabled",
    "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "GX_ANALYTICS_ENABLED": "false",
}.items():
    os.environ.setdefault(_k, _v)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:  # torch missing or broken: no GPU either way
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs a GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA} is missing: the offline data must sit beside the checkout")
    return SHARED_DATA


@pytest.fixture(scope="session")
def pool():
    from routerops.pool import load_pool

    return load_pool(REPO_ROOT / "pool.yaml")


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """One temporary Prefect server for the whole session (starting one takes ~10 s)."""
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def write_trajectories():
    """`write_trajectories(path)`: a small evaluation's trajectories.parquet. Mixtral (17 tokens)
    and Mistral (150 tokens) right on six NQ questions, the router calling Mixtral."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from routerops.candidates.types import CallOrigin
    from routerops.evaluation import Call, EvalRecord

    def write(path: Path) -> None:
        rows = []
        for i in range(6):
            q = f"nq:{i}"
            for model, tokens in (("Mixtral-8x22B-Instruct", 17), ("Mistral-7B-Instruct", 150)):
                rows.append(EvalRecord(f"single:{model}", q, "nq", "q?", ("Paris",), "Paris", True,
                                       (Call(model, CallOrigin.HTTP, tokens),)).as_row())
            rows.append(EvalRecord("router", q, "nq", "q?", ("Paris",), "Paris", True,
                                   (Call("Mixtral-8x22B-Instruct", CallOrigin.HTTP, 17),)).as_row())
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), path)

    return write


# Lineage records made in memory, and git repositories driven through the real `git` with an
# isolated configuration (the lineage, registry, champion and promotion tests).

def _art(path: str, stage: str | None, seed: str) -> ArtifactRef:
    return ArtifactRef(path=path, stage=stage, md5=(seed * 32)[:32] + ".dir", size=100, nfiles=2)


@pytest.fixture
def make_record() -> Callable[..., LineageRecord]:
    """`make_record(commit=..., output_price=..., em=..., weights=...)`: a consistent record (its
    version id computed) differing only where asked."""
    def make(commit: str = "0" * 40, output_price: float = 1.2, em: float = 0.25, weights: str = "a",
             params: dict[str, Any] | None = None) -> LineageRecord:
        record = LineageRecord(
            schema_version=1, version="", created_at=datetime(2026, 12, 1, tzinfo=UTC), parent=None,
            remote="s3://bucket/dvc",
            code=CodeInfo(commit=commit, dirty=False, files={"services/router_service.py": "1" * 64}),
            data=DataInfo(raw=_art("data", None, "1"), dataset=_art("artifacts/dataset", "build_dataset", "2"),
                          validation=_art("artifacts/validation", "validate_dataset", "3"), validation_success=True),
            prices=PricesInfo(pool_sha256="4" * 64, snapshot_id="s", pricing_id=f"p{output_price}", label="list",
                              effective_date="2026-01-01", source="tests",
                              usd_per_mtok={"Mixtral-8x22B-Instruct": {"input": 1.2, "output": output_price},
                                            "Mistral-7B-Instruct": {"input": 0.2, "output": 0.2}}),
            config=ConfigInfo(params_sha256="5" * 64, stages={"train_router": params or {"train_router": {"seed": 0}}},
                              training_backend="local"),
            model=ModelInfo(router=_art("artifacts/router", "train_router", weights), checkpoint=None,
                            model_tag="", bento_tag="", package_files={"router/model.safetensors": weights * 64}),
            evaluation=EvaluationInfo(artifact=_art("artifacts/evaluation", "evaluate_router", "7"),
                                      metrics={"em": em, "usd_per_question": 2e-5 * output_price}),
            environment=EnvironmentInfo(lock_sha256="8" * 64, python="3.11.7", packages={"torch": "2.13.0"}))
        v = version_id(record)
        return record.model_copy(update={"version": v, "model": record.model.model_copy(
            update={"model_tag": f"routerops-router:{v}", "bento_tag": f"routerops-router-service:{v}"})})

    return make


class Git:
    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root, self.env = root, env

    def __call__(self, *args: str) -> str:
        proc = subprocess.run(["git", *args], cwd=self.root, env=self.env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"git {args}: {proc.stderr}"
        return proc.stdout

    def tags(self) -> list[str]:
        return sorted(self("tag", "--list").split())


@pytest.fixture
def git_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Git:
    """A repository with one commit of the lineage files, git's global config isolated."""
    env = {"GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "tests",
           "GIT_AUTHOR_EMAIL": "tests@routerops.invalid", "GIT_COMMITTER_NAME": "tests",
           "GIT_COMMITTER_EMAIL": "tests@routerops.invalid"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    root = tmp_path / "repo"
    root.mkdir()
    git = Git(root, {**os.environ})
    git("init", "-q", "-b", "main")
    for name in ("dvc.lock", "params.yaml", "pool.yaml", "data.dvc"):
        (root / name).write_text(f"{name} v1\n")
    git("add", "-A")
    git("commit", "-q", "-m", "first")
    return git
