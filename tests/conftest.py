"""Session-wide test setup: telemetry off, offline hub, shared fixtures.

No __init__.py anywhere under tests/: pytest runs in importlib mode so that our test modules
never collide with the top-level `tests` package the verl wheel installs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
