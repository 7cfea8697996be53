"""A packaged router to serve: a scratch clone of this repository in which `dvc repro
package_router` built a tiny router, evaluated it and packaged it as a BentoML model and Bento.

Services start with `bentoml serve <bento tag>` in a directory that is not any checkout, so every
test proves the Bento carries its own code. Every service a test starts is stopped by the fixture.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from routerops.keys import CreatedKey, KeyStore
from routerops.packaging import RECORD_FILE, PackageRecord
from routerops.service_process import ServiceProcess
from routerops.serving import KEYS_DB_ENV

# Seconds of CPU training on 2 cores; enough to follow the protocol most of the time.
TINY = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 4,
        "num_kv_heads": 2, "copy_drills": 0, "context_drills": 0, "grpo_drills_per_step": 2, "sft_examples": 600,
        "sft_epochs": 2, "sft_batch_size": 16, "sft_lr": 0.006, "grpo_steps": 2, "questions_per_step": 2,
        "group_size": 2, "checkpoint_every": 1}
TEST_PER_BENCHMARK = 4
OPENAI_MAX_CONCURRENCY = 2


@dataclass(frozen=True)
class Packaged:
    project: Path  # the scratch clone
    home: Path  # its BentoML home
    record: PackageRecord


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="session")
def packaged(tmp_path_factory, repo_root, shared_data) -> Packaged:
    project = tmp_path_factory.mktemp("served") / "project"
    subprocess.run(["git", "clone", "-q", str(repo_root), str(project)], check=True, timeout=120)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train_router"]["local"].update(TINY)
    params["build_dataset"]["sizes"]["local"]["test"] = dict.fromkeys(params["build_dataset"]["sizes"]["local"]["test"],
                                                                      TEST_PER_BENCHMARK)
    params["evaluate_router"].update({"knn_train_questions": 20, "bootstrap_samples": 100})
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "ROUTEROPS_SHARED_DATA": str(shared_data), "PATH": f"{Path(sys.executable).parent}:"
           f"{os.environ['PATH']}", "ROUTEROPS_PROGRESS": "off"}
    env.pop("ROUTEROPS_ROOT", None)
    _run([sys.executable, "-m", "routerops.cli", "data", "seed"], project, env, 300)
    _run([sys.executable, "-m", "dvc", "repro", "package_router"], project, env, 1500)
    record = PackageRecord.model_validate_json((project / "artifacts" / "package" / RECORD_FILE).read_text())
    return Packaged(project, project / ".routerops" / "bentoml", record)


PACKAGE_AGAIN = textwrap.dedent("""
    import sys
    from pathlib import Path
    from routerops.config import load_params
    from stages.package_router import Inputs, run, write
    root, params_file = Path.cwd(), Path(sys.argv[1])
    params = load_params(params_file)
    inputs = Inputs.of_project(root, params)
    inputs = Inputs(inputs.pool, inputs.pool_file, params_file, root)
    out = run(params, inputs)
    write(out, params, root, root / "artifacts" / sys.argv[2])
    print(out.record.model_dump_json())
""")


@pytest.fixture(scope="session")
def openai_packaged(packaged: Packaged, shared_data) -> PackageRecord:
    """The same router packaged with HTTP candidates (params candidates.backend: openai, one
    attempt per call, no cache) and at most 2 requests at once: a second version, served against a
    loopback fake server."""
    params = yaml.safe_load((packaged.project / "params.yaml").read_text())
    params["candidates"].update({"backend": "openai", "cache_path": None, "max_attempts": 1, "read_timeout_s": 60})
    params["serve"]["max_concurrency"] = OPENAI_MAX_CONCURRENCY
    params_file = packaged.project / "params-openai.yaml"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "ROUTEROPS_SHARED_DATA": str(shared_data)}
    env.pop("ROUTEROPS_ROOT", None)
    proc = _run([sys.executable, "-c", PACKAGE_AGAIN, str(params_file), "package-openai"], packaged.project, env, 600)
    return PackageRecord.model_validate_json(proc.stdout.strip().splitlines()[-1])


@pytest.fixture
def keys(tmp_path) -> KeyStore:
    return KeyStore(tmp_path / "keys" / "keys.sqlite")


@pytest.fixture
def key(keys: KeyStore) -> CreatedKey:
    return keys.create("tests")


@pytest.fixture
def serve(packaged: Packaged, keys: KeyStore, tmp_path) -> Iterator[Callable[..., ServiceProcess]]:
    """Factory: `serve(bento=..., env=...)` starts a service from a scratch directory."""
    started: list[ServiceProcess] = []

    def start(bento: str | None = None, env: dict[str, str] | None = None) -> ServiceProcess:
        scratch = tmp_path / f"cwd-{len(started)}"
        scratch.mkdir()
        svc = ServiceProcess(bento or packaged.record.bento_tag, packaged.home, cwd=scratch,
                             env={KEYS_DB_ENV: str(keys.path), **(env or {})},
                             log_path=tmp_path / f"serve-{len(started)}.log")
        started.append(svc)
        return svc.start(timeout_s=240)

    yield start
    for svc in started:
        svc.stop(timeout_s=60)
